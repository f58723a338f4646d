"""Where the kernels run: CUDA GPUs, or the CPU through Triton's interpreter."""

import functools
import os

import torch

# Triton decides at decoration time whether @triton.jit kernels run in its CPU interpreter.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _multiprocessor_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessor_count(device):
    """Streaming multiprocessors of a CUDA device (1 under the interpreter), read once per
    device."""
    if INTERPRETED:
        return 1
    return _multiprocessor_count(device.index if device.index is not None
                                 else torch.cuda.current_device())


def check_devices(arguments):
    """All tensors among `arguments` ({name: value}, the first one a tensor) on the first one's
    device, which must be CUDA, or the CPU when the kernels run in Triton's interpreter."""
    tensors = {k: v for k, v in arguments.items() if isinstance(v, torch.Tensor)}
    first, x0 = next(iter(tensors.items()))
    device = x0.device
    for name, x in tensors.items():
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but {first} is on {device}; "
                             "all tensors must be on one device")
    if device.type == "cpu":
        if not INTERPRETED:
            raise ValueError(f"{first} is on the CPU: fusedscan's kernels run on CUDA GPUs, or on "
                             "the CPU only through Triton's interpreter (set TRITON_INTERPRET=1 "
                             "before importing fusedscan)")
    elif device.type != "cuda":
        raise ValueError(f"{first} must be on a CUDA device (or the CPU under TRITON_INTERPRET=1), "
                         f"got {device}")
    elif INTERPRETED:
        raise ValueError(f"{first} is on CUDA but TRITON_INTERPRET=1 was set when fusedscan was "
                         "imported")
