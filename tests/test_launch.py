"""fusedscan/utils/launch.py: a launch plan with an absent (None) pointer argument, by Triton's
own path (its first call, and every call under the interpreter) and by the compiled kernel's
launcher (later calls on a GPU: Triton 3.6's C launch function); the checks' plan keys."""

import torch
import triton
import triton.language as tl

from fusedscan.selective_scan.validate import check_inputs
from fusedscan.utils.launch import LaunchPlan
from tests.conftest import DEVICE


@triton.jit
def _scaled_copy_kernel(x_ptr, scale_ptr, out_ptr, n, HAS_SCALE_FLAG, BLOCK: tl.constexpr):
    """out = x · scale[i], or x where the flag (read at run time) says scale is absent."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    scale = tl.load(scale_ptr + offs, mask=mask & (HAS_SCALE_FLAG != 0), other=1.0)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * scale, mask=mask)


def test_absent_pointer_reaches_the_kernel_unread():
    n = 1000
    x = torch.randn(n, device=DEVICE)
    absent = torch.full((1,), float("nan"), device=DEVICE)
    plans = {flag: LaunchPlan(_scaled_copy_kernel, (triton.cdiv(n, 256),), 3, x.get_device(),
                              absent, n=n, HAS_SCALE_FLAG=flag, BLOCK=256) for flag in (0, 1)}
    for _ in range(3):  # Triton's path first, then (on a GPU) the compiled kernel's launcher
        scale = torch.randn(n, device=DEVICE)
        for flag, expected in ((0, x), (1, x * scale)):
            out = torch.full_like(x, float("nan"))
            plans[flag](x, None if flag == 0 else scale, out)
            torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if DEVICE == "cuda" and triton.__version__.startswith("3.6."):
        # Later launches call Triton 3.6's C launch function itself.
        assert all(type(p.launcher).__name__ == "builtin_function_or_method"
                   for p in plans.values())


def test_plan_keys_follow_the_signature():
    """One PlanKey per checked signature: the same for fresh tensors of the same signature,
    another for a different one."""
    def key(L):
        u = torch.randn(1, 4, L, device=DEVICE)
        A = -torch.rand(4, 3, device=DEVICE)
        B = torch.randn(1, 3, L, device=DEVICE)
        return check_inputs(u, u.clone(), A, B, B.clone(), None, None, None, False, False, None,
                            None, None, None, None)[1]
    assert key(9) is key(9)
    assert key(9) is not key(10)
