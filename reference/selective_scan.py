"""Sequential reference for ``fusedscan.selective_scan_ext``.

Written for clarity, not speed: one Python step per visited token, in the dtype of the inputs
(pass float64 tensors for a high-precision reference). It shares no code with the kernel path.
"""

import torch
import torch.nn.functional as F


def _expand_bc(M, batch, dim, L):
    """Fixed (dim, N), variable (batch, N, L) or grouped (batch, G, N, L) -> (batch, dim, N, L)."""
    if M.dim() == 2:
        return M[None, :, :, None].expand(batch, dim, M.shape[1], L)
    if M.dim() == 3:
        return M[:, None].expand(batch, dim, M.shape[1], L)
    groups = M.shape[1]
    return M.repeat_interleave(dim // groups, dim=1)


def delta_hat(delta, delta_bias=None, delta_softplus=False, delta_scale=None):
    """Δ̂ before thresholding: (delta + delta_bias), softplus if asked, times delta_scale."""
    dt = delta
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    if delta_scale is not None:
        scale = delta_scale.to(dt.dtype)[None, :, None] if torch.is_tensor(delta_scale) else delta_scale
        dt = dt * scale
    return dt


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, *, initial_state=None, delta_scale=None,
                       a_scale=None, delta_threshold=None, keep_idx=None,
                       return_state_peak=False):
    """Same arguments and semantics as ``fusedscan.selective_scan_ext``; computes in the widest
    floating dtype among the inputs (at least float32); ``out`` has u's dtype. With
    return_state_peak=True the result also ends with max_t |h_t| (batch, dim, N), elementwise
    over the visited positions and the initial state: the magnitudes the state went through,
    which set the scale of a float32 scan's rounding error in its last state."""
    dtype_out = u.dtype
    ctype = torch.promote_types(torch.float32, torch.promote_types(u.dtype, delta.dtype))
    batch, dim, L = u.shape

    u, delta = u.to(ctype), delta.to(ctype)
    Bx = _expand_bc(B.to(ctype), batch, dim, L)
    Cx = _expand_bc(C.to(ctype), batch, dim, L)
    if z is not None:
        z = z.to(ctype)

    # DeciMamba: gather the kept positions first, then scan them as an ordinary sequence.
    if keep_idx is not None:
        idx3 = keep_idx[:, None, :].expand(batch, dim, keep_idx.shape[1])
        u, delta = u.gather(2, idx3), delta.gather(2, idx3)
        if z is not None:
            z = z.gather(2, idx3)
        idx4 = keep_idx[:, None, None, :].expand(batch, dim, Bx.shape[2], keep_idx.shape[1])
        Bx, Cx = Bx.gather(3, idx4), Cx.gather(3, idx4)

    dt = delta_hat(delta, delta_bias, delta_softplus, delta_scale)
    if delta_threshold is not None:
        dt = torch.where(dt <= delta_threshold.to(ctype)[None, :, None], torch.zeros_like(dt), dt)

    A_eff = A.to(ctype)
    if a_scale is not None:
        if torch.is_tensor(a_scale):
            a_scale = a_scale.to(ctype)
            A_eff = A_eff * (a_scale[:, None] if a_scale.dim() == 1 else a_scale)
        else:
            A_eff = A_eff * a_scale

    if initial_state is not None:
        h = initial_state.to(ctype).clone()
    else:
        h = torch.zeros(batch, dim, A.shape[1], dtype=ctype, device=u.device)
    peak = h.detach().abs()
    ys = []
    # unbind, not indexing per step: autograd then stacks the per-step gradients once instead of
    # building a full-size gradient tensor for every step.
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(2), u.unbind(2), Bx.unbind(3), Cx.unbind(3)):
        dt_t = dt_t[:, :, None]
        h = torch.exp(dt_t * A_eff) * h + (dt_t * u_t[:, :, None]) * B_t
        ys.append((h * C_t).sum(-1))
        if return_state_peak:
            peak = torch.maximum(peak, h.detach().abs())
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(ctype)[None, :, None] * u
    if z is not None:
        y = y * F.silu(z)
    out = y.to(dtype_out)
    result = (out, h) if return_last_state else (out,)
    if return_state_peak:
        result += (peak,)
    return result if len(result) > 1 else out
