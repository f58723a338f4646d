"""selective_scan_ext: argument handling, kernel launch and the autograd wrapper."""

import math

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

from fusedscan.selective_scan.chunk import LOG2E, selective_scan_fwd_kernel
from fusedscan.selective_scan.validate import check_inputs

INTERPRETED = isinstance(selective_scan_fwd_kernel, InterpretedFunction)
# Visited positions between saved states (the backward pass recomputes one chunk at a time).
CHUNK_SIZE = 32 if INTERPRETED else 2048
MAX_GROUP = 16


def _bc_strides(M, variable):
    """(batch, group, state, position) strides of a variable B/C; a fixed (dim, N) one puts its
    channel stride in the group slot and has no batch or position stride."""
    if not variable:
        return 0, M.stride(0), M.stride(1), 0
    if M.dim() == 3:
        return M.stride(0), 0, M.stride(1), M.stride(2)
    return M.stride(0), M.stride(1), M.stride(2), M.stride(3)


def _launch_config(u, delta, channels_per_group, batch, dim, n_chunks):
    """(BLOCK_D, BLOCK_T, segments). A tile row spans one warp: 32 lanes × 16 bytes of input."""
    if INTERPRETED:
        block_d, block_t, units = 4, 16, 1
    else:
        block_d = 8
        block_t = 256 if max(u.element_size(), delta.element_size()) == 2 else 128
        units = torch.cuda.get_device_properties(u.device).multi_processor_count
    while channels_per_group != dim and channels_per_group % block_d:
        block_d //= 2
    programs = batch * triton.cdiv(dim, block_d)
    # Split the positions only when batch × channel blocks leave most of the GPU idle: the
    # state-only pass costs (segments − 1) / segments of a scan.
    segments = min(n_chunks, max(1, (2 * units) // programs))
    return block_d, block_t, segments


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, delta_scale=None, a_scale=None, delta_threshold=None,
                       keep_idx=None, *, B_variable, C_variable, B_groups=1, C_groups=1,
                       chunk_size=None, block_d=None, block_t=None, num_segments=None,
                       num_warps=4):
    """Launches the forward kernels on checked inputs.

    Returns out (batch, dim, K or L) in u's dtype, last_state (batch, dim, N) float32 and
    chunk_states (batch, dim, ⌈K/chunk_size⌉, N) float32, the state entering every chunk."""
    batch, dim, L = u.shape
    dstate = A.shape[1]
    nvisit = keep_idx.shape[1] if keep_idx is not None else L
    chunk_size = chunk_size or CHUNK_SIZE
    n_chunks = triton.cdiv(nvisit, chunk_size)
    # Channels per group of B and C together: a channel block must not straddle a group.
    per_group = dim // math.lcm(B_groups, C_groups)
    auto_d, auto_t, auto_segs = _launch_config(u, delta, per_group, batch, dim, n_chunks)
    block_d, block_t = block_d or auto_d, block_t or auto_t
    if chunk_size % block_t or per_group % block_d and per_group != dim:
        raise ValueError(f"block_t = {block_t} must divide chunk_size = {chunk_size} and "
                         f"block_d = {block_d} must divide the channels per group, {per_group}")
    segs = min(num_segments or auto_segs, n_chunks)
    seg_len = triton.cdiv(n_chunks, segs) * chunk_size
    segs = triton.cdiv(nvisit, seg_len)
    n_dblocks = triton.cdiv(dim, block_d)

    # States per unrolled group: all of them when N <= 16 (every Mamba-1 model), else groups
    # of at most 16, carried through a scratch between tiles.
    n_groups = triton.cdiv(dstate, MAX_GROUP)
    group = triton.cdiv(dstate, n_groups)

    dev = u.device
    out = torch.empty((batch, dim, nvisit), dtype=u.dtype, device=dev)
    last_state = torch.empty((batch, dim, dstate), dtype=torch.float32, device=dev)
    chunk_states = torch.empty((batch, dim, n_chunks, dstate), dtype=torch.float32, device=dev)
    seg_states = torch.empty((batch, segs, dim, dstate), dtype=torch.float32, device=dev)
    seg_dsum = torch.empty((batch, segs, dim), dtype=torch.float32, device=dev)
    carry = torch.empty((batch * n_dblocks * segs * 2 * block_d * dstate if n_groups > 1 else 1,),
                        dtype=torch.float32, device=dev)

    delta_mult, a_mult = 1.0, LOG2E
    if delta_scale is not None and not torch.is_tensor(delta_scale):
        delta_mult, delta_scale = float(delta_scale), None
    if a_scale is not None and not torch.is_tensor(a_scale):
        a_mult, a_scale = LOG2E * float(a_scale), None
    if a_scale is not None and a_scale.dim() == 1:
        a_scale = a_scale[:, None].expand(dim, dstate)

    def ptr(x):
        # Absent float32 parameters are never read (masked off); A stands in with their dtype.
        return x if x is not None else A

    def strides(x, n):
        return x.stride() if x is not None else (0,) * n

    args = (
        u, delta, A, B, C, ptr(D), ptr(z), ptr(delta_bias), ptr(delta_scale), ptr(a_scale),
        ptr(delta_threshold), ptr(keep_idx), ptr(initial_state),
        out, last_state, chunk_states, seg_states, seg_dsum, carry,
        dim, dstate, nvisit, dim // B_groups, dim // C_groups, n_dblocks, segs, seg_len, n_chunks,
        n_groups, delta_mult, a_mult,
        int(D is not None), int(delta_bias is not None), int(delta_softplus),
        int(delta_scale is not None), int(a_scale is not None), int(delta_threshold is not None),
        int(initial_state is not None),
        *u.stride(), *delta.stride(), *strides(z, 3), *out.stride(), *A.stride(),
        *_bc_strides(B, B_variable), *_bc_strides(C, C_variable),
        *strides(a_scale, 2), *strides(keep_idx, 2), *strides(initial_state, 3),
    )
    flags = dict(
        CHUNK=chunk_size, BLOCK_D=block_d, BLOCK_T=block_t, NG=group, MULTI_GROUP=n_groups > 1,
        HAS_Z=z is not None, HAS_KEEP_IDX=keep_idx is not None, B_VARIABLE=B_variable,
        C_VARIABLE=C_variable, num_warps=num_warps,
    )
    if segs > 1:
        selective_scan_fwd_kernel[(batch * n_dblocks, segs - 1)](*args, STATE_ONLY=True, **flags)
    selective_scan_fwd_kernel[(batch * n_dblocks, segs)](*args, STATE_ONLY=False, **flags)
    return out, last_state, chunk_states


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                delta_scale, a_scale, delta_threshold, keep_idx, B_variable, C_variable, B_groups,
                C_groups):
        out, last_state, _ = selective_scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, delta_scale,
            a_scale, delta_threshold, keep_idx, B_variable=B_variable, C_variable=C_variable,
            B_groups=B_groups, C_groups=C_groups)
        return out, last_state

    @staticmethod
    def backward(ctx, dout, dlast_state):
        raise NotImplementedError("selective_scan_ext has no backward pass yet; it computes the "
                                  "forward only")


def selective_scan_ext(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, *, initial_state=None, delta_scale=None,
                       a_scale=None, delta_threshold=None, keep_idx=None):
    """Mamba's selective scan (S6) with the length-extension controls fused in.

    The positional arguments are those of mamba-ssm's ``selective_scan_fn``; with no keyword
    argument set the result is the same.

    Shapes (batch, dim, L; N states; G groups; K kept positions):
        u, delta, z:    (batch, dim, L), float32, float16 or bfloat16.
        A:              (dim, N) float32, real; 1 <= N <= 256.
        B, C:           fixed (dim, N) float32, variable (batch, N, L), or grouped
                        (batch, G, N, L) with dim % G == 0 (channel d uses group
                        d // (dim // G)); variable ones float32, float16 or bfloat16.
        D, delta_bias:  (dim,) float32.
        initial_state:  (batch, dim, N) float32.
        delta_scale:    float or (dim,) float32.
        a_scale:        float, (dim,) or (dim, N) float32.
        delta_threshold: (dim,) float32.
        keep_idx:       (batch, K) int64, strictly increasing, values in [0, L).

    Semantics (all arithmetic in float32):
        Δ̂ = delta + delta_bias, then softplus if delta_softplus, then × delta_scale, then
        Δ̂ := 0 wherever Δ̂ <= delta_threshold[d] (the state passes such a token unchanged, but
        it still has an output). A_eff = A · a_scale. Over the visited positions t (keep_idx[b]
        if given, else 0..L-1), in order:
            h ← exp(Δ̂_t · A_eff) ⊙ h + (Δ̂_t · u_t) · B_t
            y_t = Σ_n C_t[n] · h[n] + D · u_t,   out_t = y_t · silu(z_t) if z is given,
        with h starting at initial_state or zero.

    Returns out (batch, dim, L), or (batch, dim, K) with keep_idx (out[:, :, j] belongs to
    position keep_idx[:, j]), in u's dtype; with return_last_state=True, (out, last_state) where
    last_state (batch, dim, N) float32 is h after the last visited position.

    Raises TypeError / ValueError (NotImplementedError for complex A, B or C) naming the argument
    before any kernel runs. Tensors must be on one CUDA device, or on the CPU when TRITON_INTERPRET=1
    was set before fusedscan was imported. Only the forward pass is implemented so far.
    """
    B_variable, B_groups, C_variable, C_groups = check_inputs(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state,
        delta_scale, a_scale, delta_threshold, keep_idx, INTERPRETED)
    out, last_state = SelectiveScanFn.apply(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, delta_scale, a_scale,
        delta_threshold, keep_idx, B_variable, C_variable, B_groups, C_groups)
    return (out, last_state) if return_last_state else out
