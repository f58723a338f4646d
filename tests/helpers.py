"""Input generation and comparison shared by the tests."""

import contextlib
import math

import torch

from fusedscan.selective_scan.options import ScanOptions
from reference import scan_inputs, selective_scan_ref
from tests.conftest import DEVICE

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BC_KINDS = ["variable", "fixed", "grouped"]
OPTIONS = ["D", "z", "delta_bias", "delta_softplus", "return_last_state", "initial_state",
           "delta_scale", "a_scale", "delta_threshold", "keep_idx"]


def rel_err(x, ref):
    """‖x − ref‖ / ‖ref‖ in float64; infinite if x has a NaN or inf where ref is finite."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return math.inf
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@contextlib.contextmanager
def nan_filled_outputs():
    """Every tensor fusedscan allocates uninitialized (torch.empty, torch.empty_like,
    Tensor.new_empty) starts as NaN (floats) or -1 (ints), so an element the kernel forgets to
    write fails the comparison."""
    patched = [(torch, "empty"), (torch, "empty_like"), (torch.Tensor, "new_empty")]
    real = [getattr(owner, name) for owner, name in patched]

    def filled(make):
        def allocate(*args, **kwargs):
            t = make(*args, **kwargs)
            return t.fill_(math.nan) if t.is_floating_point() else t.fill_(-1)
        return allocate

    for (owner, name), make in zip(patched, real):
        setattr(owner, name, filled(make))
    try:
        yield
    finally:
        for (owner, name), make in zip(patched, real):
            setattr(owner, name, make)


def make_case(*args, **kwargs):
    """reference.scan_inputs on this machine's test device."""
    return scan_inputs(*args, device=DEVICE, **kwargs)


def strided(x):
    """A non-contiguous tensor with x's values (every stride doubled in the last dimension)."""
    return torch.stack([x, torch.full_like(x, math.nan)], -1)[..., 0]


def strided_case(batch, dim, L, dstate, **options):
    """make_case with every input a non-contiguous view: activations transposed, parameter and
    scale tensors strided."""
    args, kwargs = make_case(batch, dim, L, dstate, z=True, initial_state=True,
                             delta_scale="tensor", a_scale="dim_n", delta_threshold=True,
                             **options)
    args[0] = args[0].transpose(1, 2).contiguous().transpose(1, 2)
    args[1] = args[1].transpose(1, 2).contiguous().transpose(1, 2)
    args[2] = args[2].t().contiguous().t()
    args[3] = args[3].transpose(1, 2).contiguous().transpose(1, 2)
    args[6] = args[6].permute(2, 0, 1).contiguous().permute(1, 2, 0)
    args[5], args[7] = strided(args[5]), strided(args[7])
    kwargs = {k: strided(v) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in kwargs.items()}
    return args, kwargs


def misaligned(x):
    """x's values in a tensor whose data starts one element into its storage: a pointer that is
    not 16-byte aligned, which Triton compiles for separately."""
    y = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:].view(x.shape)
    return y.copy_(x)


def to_double(x):
    return x.double() if torch.is_tensor(x) and x.is_floating_point() else x


def reference(args, kwargs, return_last_state=True):
    """The float64 reference on the same (already rounded) inputs."""
    return selective_scan_ref(*[to_double(a) for a in args], return_last_state,
                              **{k: to_double(v) for k, v in kwargs.items()})


def option_ids(flags):
    return "-".join(o for o, on in zip(OPTIONS, flags) if on) or "none"


def combination_case(flags, shape):
    """Inputs for one combination of OPTIONS (flags: one bool per option) as
    (args, kwargs, dtype, return_last_state). The dtype, the B/C forms and the form of the
    scales cycle with the combination so that each is met many times."""
    on = dict(zip(OPTIONS, flags))
    index = sum(bit << i for i, bit in enumerate(flags))
    dtype = DTYPES[index % 3]
    batch, dim, L, dstate = shape
    args, kwargs = make_case(
        batch, dim, L, dstate, dtype=dtype, B_kind=BC_KINDS[index % 3],
        C_kind=BC_KINDS[(index // 3) % 3], D=on["D"], z=on["z"], delta_bias=on["delta_bias"],
        delta_softplus=on["delta_softplus"], initial_state=on["initial_state"],
        delta_scale=("float", "tensor")[index % 2] if on["delta_scale"] else None,
        a_scale=("float", "dim", "dim_n")[index % 3] if on["a_scale"] else None,
        delta_threshold=on["delta_threshold"], keep=L // 3 if on["keep_idx"] else None)
    return args, kwargs, dtype, on["return_last_state"]


def launcher_args(args, kwargs):
    """(u, delta, A, B, C, ScanOptions) of a make_case case, as the launchers take them."""
    u, delta, A, B, C, D, z, delta_bias, softplus = args
    return u, delta, A, B, C, ScanOptions(D, z, delta_bias, softplus, **kwargs)
