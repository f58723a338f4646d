"""Triton device functions shared by the kernels: Δ̂ (bias, softplus, scale, threshold), the
per-channel parameters and A, and the bits of the kernels' `flags` argument."""

import triton
import triton.language as tl
from triton.language.extra import libdevice

from fusedscan.utils.device import INTERPRETED

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(LOG2E)

# Bits of the kernels' `flags` argument: which optional inputs are given. They are read at run
# time, so one compiled kernel serves every combination (an absent input costs a masked load).
FLAG_D = tl.constexpr(1)
FLAG_DELTA_BIAS = tl.constexpr(2)
FLAG_SOFTPLUS = tl.constexpr(4)
FLAG_DELTA_SCALE = tl.constexpr(8)
FLAG_A_SCALE = tl.constexpr(16)
FLAG_THRESHOLD = tl.constexpr(32)
FLAG_INITIAL_STATE = tl.constexpr(64)
FLAG_DLAST = tl.constexpr(128)
FLAG_LAST_STATE = tl.constexpr(256)  # the forward writes last_state


def option_flags(D=None, delta_bias=None, delta_softplus=False, delta_scale=None, a_scale=None,
                 delta_threshold=None, initial_state=None, dlast=None, last_state=False):
    """The `flags` argument for the given inputs (tensors or None; delta_softplus and
    last_state bools)."""
    present = ((D, FLAG_D), (delta_bias, FLAG_DELTA_BIAS), (delta_scale, FLAG_DELTA_SCALE),
               (a_scale, FLAG_A_SCALE), (delta_threshold, FLAG_THRESHOLD),
               (initial_state, FLAG_INITIAL_STATE), (dlast, FLAG_DLAST))
    return (sum(bit.value for x, bit in present if x is not None)
            + delta_softplus * FLAG_SOFTPLUS.value + last_state * FLAG_LAST_STATE.value)


if INTERPRETED:
    @triton.jit
    def log2_approx(x):
        return tl.log2(x)
else:
    @triton.jit
    def log2_approx(x):
        # lg2.approx.f32: one instruction of the special-function unit; absolute error about 2^-22.
        return libdevice.fast_log2f(x)


@triton.jit
def scan_combine(a1, b1, a2, b2):
    """(a1, b1) then (a2, b2) of the recurrence h ← a·h + b."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def softplus(x):
    """log(1 + exp(x)), the identity above 20 like torch.nn.functional.softplus."""
    if x.dtype == tl.float64:
        # log(w)·e/(w − 1), w = 1 + e, keeps full relative precision for small e.
        e = tl.exp(x)
        w = 1.0 + e
        lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    else:
        # exp2/log2 map to the GPU's approximate units; log2's error is absolute near 1, so
        # small e takes the series of log1p (truncation below 6e-7 relative at e < 1/8).
        e = tl.exp2(x * _LOG2E)
        series = e * (1.0 + e * (-0.5 + e * (1.0 / 3.0 + e * (-0.25 + e * (
            0.2 + e * (-1.0 / 6.0 + e * (1.0 / 7.0)))))))
        lp = tl.where(e < 0.125, series, LN2 * log2_approx(1.0 + e))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def delta_hat(delta, delta_bias, delta_scale, delta_threshold, flags):
    """Δ̂ of a [BLOCK_D, BLOCK_T] tile: returns (Δ̂, delta + bias, the value before scaling). An
    absent threshold is −inf; NaN is kept (NaN <= thr is false)."""
    pre = delta + delta_bias[:, None]
    sp = pre
    if (flags & FLAG_SOFTPLUS) != 0:
        sp = softplus(pre)
    dt = sp * delta_scale[:, None]
    dt = tl.where(dt <= delta_threshold[:, None], 0.0, dt)
    return dt, pre, sp


@triton.jit
def channel_params(rows, row_ok, delta_bias_ptr, delta_scale_ptr, delta_threshold_ptr, flags,
                   delta_mult):
    """Per-channel Δ̂ parameters, absent ones at their neutral value. A negative delta_scale
    (its values are not read on the host) becomes NaN: the decay would turn into growth."""
    delta_bias = tl.load(delta_bias_ptr + rows, mask=row_ok & ((flags & FLAG_DELTA_BIAS) != 0),
                         other=0.0)
    delta_scale = tl.load(delta_scale_ptr + rows, mask=row_ok & ((flags & FLAG_DELTA_SCALE) != 0),
                          other=1.0)
    delta_scale = delta_mult * tl.where(delta_scale < 0, float("nan"), delta_scale)
    delta_threshold = tl.load(delta_threshold_ptr + rows,
                              mask=row_ok & ((flags & FLAG_THRESHOLD) != 0), other=float("-inf"))
    return delta_bias, delta_scale, delta_threshold


@triton.jit
def load_D(D_ptr, rows, row_ok, flags):
    return tl.load(D_ptr + rows, mask=row_ok & ((flags & FLAG_D) != 0), other=0.0)


@triton.jit
def load_A(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, n, row_ok):
    """A_eff[:, n]·log2(e) for the block's rows (0 for padding states n ≥ N). A positive A_eff
    (A > 0, or a negative a_scale; their values are not read on the host) becomes NaN: the
    state would grow without bound."""
    A_n = tl.load(A_rows + n * stride_A_n, mask=row_ok, other=0.0)
    A_n *= tl.load(a_scale_rows + n * stride_as_n, mask=row_ok & ((flags & FLAG_A_SCALE) != 0),
                   other=1.0)
    return tl.where(A_n > 0, float("nan"), A_n) * a_mult
