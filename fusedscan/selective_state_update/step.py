"""Decode-step kernel: one token of the extension-aware selective scan, state updated in place.

The arithmetic is the forward scan's (same Δ̂ helper, same exp2 form of exp(Δ̂·A)), so a prefill
followed by steps gives the scan's result over the whole sequence.
"""

import torch
import triton
import triton.language as tl

from fusedscan.utils.device import INTERPRETED
from fusedscan.utils.kernels import (
    channel_params, delta_hat, load_A, load_D, option_flags,
)
from fusedscan.utils.launch import kernel_scales, strides


@triton.jit(do_not_specialize=["flags"])
def selective_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dt_bias_ptr, delta_scale_ptr,
    a_scale_ptr, delta_threshold_ptr, out_ptr,
    dim, dstate, dim_per_group_B, dim_per_group_C, delta_mult, a_mult, flags,
    stride_state_b, stride_state_d, stride_state_n,
    stride_x_b, stride_x_d, stride_dt_b, stride_dt_d, stride_z_b, stride_z_d,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n, stride_C_b, stride_C_g, stride_C_n,
    stride_as_d, stride_as_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_Z: tl.constexpr,
):
    """Grid (⌈dim / BLOCK_D⌉, batch); BLOCK_N ≥ N; out (batch, dim) contiguous. One program
    owns BLOCK_D channels of one batch row: h ← exp(Δ̂·A_eff)·h + Δ̂·x·B, out = (C·h + D·x)·silu(z)."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < dim
    rows64 = rows.to(tl.int64)
    ns = tl.arange(0, BLOCK_N)
    mask = row_ok[:, None] & (ns < dstate)[None, :]
    ACC = state_ptr.dtype.element_ty

    dt_bias, delta_scale, delta_threshold = channel_params(
        rows, row_ok, dt_bias_ptr, delta_scale_ptr, delta_threshold_ptr, flags, delta_mult)
    dt = tl.load(dt_ptr + b * stride_dt_b + rows64 * stride_dt_d, mask=row_ok, other=0.0).to(ACC)
    dt, _, _ = delta_hat(dt[:, None], dt_bias, delta_scale, delta_threshold, flags)
    x = tl.load(x_ptr + b * stride_x_b + rows64 * stride_x_d, mask=row_ok, other=0.0).to(ACC)
    A = load_A((A_ptr + rows64 * stride_A_d)[:, None], stride_A_n,
               (a_scale_ptr + rows64 * stride_as_d)[:, None], stride_as_n, flags, a_mult,
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
    y += x * load_D(D_ptr, rows, row_ok, flags)
    if HAS_Z:
        z = tl.load(z_ptr + b * stride_z_b + rows64 * stride_z_d, mask=row_ok, other=0.0).to(ACC)
        y *= z * tl.sigmoid(z)
    tl.store(out_ptr + b * dim + rows64, y.to(out_ptr.dtype.element_ty), mask=row_ok)


def selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, delta_scale,
                           a_scale, delta_threshold, B_groups, C_groups):
    """Launches the step kernel on checked inputs; returns out (batch, dim), updates state."""
    batch, dim = x.shape
    dstate = A.shape[1]
    delta_mult, delta_scale, a_mult, a_scale = kernel_scales(delta_scale, a_scale, dim, dstate)
    block_n = triton.next_power_of_2(dstate)
    # About 4 states per thread of 4 warps: many small programs, as a single token is latency-bound.
    block_d = min(triton.next_power_of_2(dim), 4 if INTERPRETED else max(1, 512 // block_n))
    out = torch.empty((batch, dim), dtype=x.dtype, device=x.device)

    def present(t):
        return t if t is not None else A

    def bc_strides(M):
        return (M.stride(0), 0, M.stride(1)) if M.dim() == 2 else M.stride()

    (stride_B_b, stride_B_g, stride_B_n), (stride_C_b, stride_C_g, stride_C_n) = (
        bc_strides(B), bc_strides(C))
    (stride_x_b, stride_x_d), (stride_dt_b, stride_dt_d) = x.stride(), dt.stride()
    (stride_z_b, stride_z_d), (stride_as_d, stride_as_n) = strides(z, 2), strides(a_scale, 2)
    selective_state_update_kernel[(triton.cdiv(dim, block_d), batch)](
        state_ptr=state, x_ptr=x, dt_ptr=dt, A_ptr=A, B_ptr=B, C_ptr=C, D_ptr=present(D),
        z_ptr=present(z), dt_bias_ptr=present(dt_bias), delta_scale_ptr=present(delta_scale),
        a_scale_ptr=present(a_scale), delta_threshold_ptr=present(delta_threshold), out_ptr=out,
        dim=dim, dstate=dstate, dim_per_group_B=dim // B_groups, dim_per_group_C=dim // C_groups,
        delta_mult=delta_mult, a_mult=a_mult,
        flags=option_flags(D, dt_bias, dt_softplus, delta_scale, a_scale, delta_threshold),
        stride_state_b=state.stride(0), stride_state_d=state.stride(1),
        stride_state_n=state.stride(2), stride_x_b=stride_x_b, stride_x_d=stride_x_d,
        stride_dt_b=stride_dt_b, stride_dt_d=stride_dt_d, stride_z_b=stride_z_b,
        stride_z_d=stride_z_d, stride_A_d=A.stride(0), stride_A_n=A.stride(1),
        stride_B_b=stride_B_b, stride_B_g=stride_B_g, stride_B_n=stride_B_n,
        stride_C_b=stride_C_b, stride_C_g=stride_C_g, stride_C_n=stride_C_n,
        stride_as_d=stride_as_d, stride_as_n=stride_as_n,
        BLOCK_D=block_d, BLOCK_N=block_n, HAS_Z=z is not None,
        num_warps=4 if not INTERPRETED else 1)
    return out
