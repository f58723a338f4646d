"""fusedscan/utils/launch.py: a launch plan with an absent (None) pointer argument, by Triton's
own path (its first call, and every call under the interpreter) and by the compiled kernel's
launcher (later calls on a GPU: Triton 3.6's C launch function); the checks' plan keys and the
signature cache's guarded lookup."""

import torch
import triton
import triton.language as tl

from fusedscan.selective_scan.validate import check_inputs
from fusedscan.utils import launch
from fusedscan.utils.launch import LaunchPlan, PlanKey, SignatureCache, launch_signature
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


def _signature_variants():
    """Argument tuples (tensor, tensor or None, flag, scale) whose launch_signatures differ in
    one thing each, or (the last two) agree with the first."""
    def x(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=DEVICE, dtype=dtype)
    base = (x(4, 6), x(6), True, 0.5)
    wide = x(4, 12)
    return [
        base,
        (x(4, 6, dtype=torch.bfloat16), x(6), True, 0.5),   # dtype
        (x(4, 7), x(6), True, 0.5),                         # shape
        (x(6, 4).t(), x(6), True, 0.5),                     # strides
        (wide[:, :6], x(6), True, 0.5),                     # strides (a slice)
        (x(4, 6), x(7)[1:], True, 0.5),                     # alignment (4 bytes off)
        (x(4, 6), None, True, 0.5),                         # an absent tensor
        (x(4, 6), x(6), False, 0.5),                        # a flag
        (x(4, 6), x(6), True, 2),                           # a scale's type
        (x(4, 6), x(6), True, None),                        # no scale
        (x(4, 6).requires_grad_(), x(6), True, 0.5),        # same signature, another guard
        (x(4, 6), x(6), True, 3.0),                         # same signature, another value
    ]


def test_signature_cache_finds_what_the_signature_finds(monkeypatch):
    """for_args gives one result per launch_signature, however often and in whatever order
    the signatures come, with fewer recent guards kept than signatures of one set of types;
    a recent signature is found without making it."""
    cache = SignatureCache()
    variants = _signature_variants()
    seen = {}
    for rnd in range(4):
        for args in (variants if rnd % 2 else variants[::-1]):
            # fresh tensors of the same signature each time
            args = tuple(a.clone() if isinstance(a, torch.Tensor) and a.is_contiguous()
                         and a.data_ptr() % 16 == 0 else a for a in args)
            got = cache.for_args(args, PlanKey, recent=3)
            assert seen.setdefault(launch_signature(*args), got) is got
    assert len(seen) == len(variants) - 2
    if launch.TensorGuards is not None:
        monkeypatch.setattr(launch, "launch_signature", None)
        args = (variants[0][0].clone(), variants[0][1].clone(), True, 0.25)
        assert cache.for_args(args, PlanKey, recent=3) is seen[launch_signature(*variants[0])]
