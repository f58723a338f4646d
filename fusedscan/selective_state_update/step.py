"""Decode-step kernel: one token of the extension-aware selective scan, state updated in place.

The arithmetic is the forward scan's (same Δ̂ helper, same exp2 form of exp(Δ̂·A)), so a prefill
followed by steps gives the scan's result over the whole sequence.
"""

import triton
import triton.language as tl

from fusedscan.selective_scan.chunk import _channel_params, _delta_hat, _load_A


@triton.jit(do_not_specialize=["has_D", "has_dt_bias", "dt_softplus", "has_delta_scale",
                               "has_a_scale", "has_threshold"])
def selective_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, delta_scale_ptr,
    a_scale_ptr, delta_threshold_ptr, out_ptr,
    dim, dstate, dim_per_group_B, dim_per_group_C, delta_mult, a_mult,
    has_D, has_dt_bias, dt_softplus, has_delta_scale, has_a_scale, has_threshold,
    stride_state_b, stride_state_d, stride_state_n,
    stride_x_b, stride_x_d, stride_dt_b, stride_dt_d, stride_z_b, stride_z_d,
    stride_out_b, stride_out_d, stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    stride_as_d, stride_as_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_Z: tl.constexpr,
):
    """Grid (⌈dim / BLOCK_D⌉, batch); BLOCK_N ≥ N. One program owns BLOCK_D channels of one
    batch row: h ← exp(Δ̂·A_eff)·h + Δ̂·x·B, out = (C·h + D·x)·silu(z)."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < dim
    rows64 = rows.to(tl.int64)
    ns = tl.arange(0, BLOCK_N)
    mask = row_ok[:, None] & (ns < dstate)[None, :]
    ACC = state_ptr.dtype.element_ty

    dt_bias, delta_scale, delta_threshold = _channel_params(
        rows, row_ok, dt_bias_ptr, delta_scale_ptr, delta_threshold_ptr, has_dt_bias,
        has_delta_scale, has_threshold, delta_mult)
    dt = tl.load(dt_ptr + b * stride_dt_b + rows64 * stride_dt_d, mask=row_ok, other=0.0).to(ACC)
    dt, _, _ = _delta_hat(dt[:, None], dt_bias, delta_scale, delta_threshold, dt_softplus)
    x = tl.load(x_ptr + b * stride_x_b + rows64 * stride_x_d, mask=row_ok, other=0.0).to(ACC)
    A = _load_A((A_ptr + rows64 * stride_A_d)[:, None], stride_A_n,
                (a_scale_ptr + rows64 * stride_as_d)[:, None], stride_as_n, has_a_scale, a_mult,
                ns[None, :], mask)
    B_rows = B_ptr + b * stride_B_b + (rows // dim_per_group_B).to(tl.int64) * stride_B_g
    C_rows = C_ptr + b * stride_C_b + (rows // dim_per_group_C).to(tl.int64) * stride_C_g
    Bm = tl.load(B_rows[:, None] + ns[None, :] * stride_B_n, mask=mask, other=0.0).to(ACC)
    Cm = tl.load(C_rows[:, None] + ns[None, :] * stride_C_n, mask=mask, other=0.0).to(ACC)

    state = (state_ptr + b * stride_state_b + rows64 * stride_state_d)[:, None] + \
        ns[None, :] * stride_state_n
    h = tl.load(state, mask=mask, other=0.0)
    h = tl.exp2(dt * A) * h + (dt * x[:, None]) * Bm
    tl.store(state, h, mask=mask)

    y = tl.sum(h * Cm, axis=1)
    y += x * tl.load(D_ptr + rows, mask=row_ok & (has_D != 0), other=0.0)
    if HAS_Z:
        z = tl.load(z_ptr + b * stride_z_b + rows64 * stride_z_d, mask=row_ok, other=0.0).to(ACC)
        y *= z * tl.sigmoid(z)
    tl.store(out_ptr + b * stride_out_b + rows64 * stride_out_d,
             y.to(out_ptr.dtype.element_ty), mask=row_ok)
