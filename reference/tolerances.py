"""What "agrees with the reference" means: relative errors ‖x − ref‖/‖ref‖ allowed against the
float64 reference on the same rounded inputs."""

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def forward_tolerance(dtype):
    return 1e-2 if dtype in LOW_PRECISION else 1e-5


def grad_tolerance(name, dtype):
    """1e-4 in float32; in bf16/fp16 the multiples of the forward tolerance that mamba-ssm's own
    test allows: du 2×, ddelta 5×, every other gradient 1×."""
    if dtype not in LOW_PRECISION:
        return 1e-4
    return {"u": 2, "delta": 5}.get(name, 1) * forward_tolerance(dtype)
