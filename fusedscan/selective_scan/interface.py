"""selective_scan_ext: argument handling, kernel launch and the autograd wrapper."""

import math
from typing import Optional

import torch
import triton
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from fusedscan.selective_scan.chunk import LOG2E, selective_scan_fwd_kernel
from fusedscan.selective_scan.chunk_backward import (
    bwd_grad_carries_kernel, bwd_main_kernel, bwd_range_states_kernel,
)
from fusedscan.selective_scan.validate import check_inputs

INTERPRETED = isinstance(selective_scan_fwd_kernel, InterpretedFunction)
# Visited positions between saved states (the backward pass recomputes one chunk at a time).
CHUNK_SIZE = 32 if INTERPRETED else 2048
# Positions per tile of the backward kernels.
BWD_BLOCK_T = 16 if INTERPRETED else 128
MAX_GROUP = 16


def _bc_strides(M, variable):
    """(batch, group, state, position) strides of a variable B/C; a fixed (dim, N) one puts its
    channel stride in the group slot and has no batch or position stride."""
    if not variable:
        return 0, M.stride(0), M.stride(1), 0
    if M.dim() == 3:
        return M.stride(0), 0, M.stride(1), M.stride(2)
    return M.stride(0), M.stride(1), M.stride(2), M.stride(3)


def _sms(device):
    return 1 if INTERPRETED else torch.cuda.get_device_properties(device).multi_processor_count


def _block_d(block_d, channels_per_group, dim):
    """Halves block_d until a block of channels lies inside one group of B and of C."""
    while channels_per_group != dim and channels_per_group % block_d:
        block_d //= 2
    return block_d


def _launch_config(u, delta, channels_per_group, batch, dim, nvisit):
    """(BLOCK_D, BLOCK_T, segments, num_warps, maxnreg). One thread owns one channel row of a
    tile: BLOCK_T positions of 16 bytes of input, scanned one after another in its registers.
    With 16-bit inputs a cap of 128 registers (a few spills) lets four programs share an SM."""
    if INTERPRETED:
        block_d, block_t, warps, maxnreg = 4, 16, 1, None
    else:
        warps = 4
        block_d = 32 * warps
        size = max(u.element_size(), delta.element_size())
        block_t = 16 // size
        maxnreg = 128 if size == 2 else None
    block_d = _block_d(block_d, channels_per_group, dim)
    programs = batch * triton.cdiv(dim, block_d)
    # Split the positions into segments until about four programs per SM run; each segment
    # but the first costs one more state-only pass over its positions.
    segments = max(1, min(triton.cdiv(nvisit, block_t), triton.cdiv(4 * _sms(u.device), programs)))
    return block_d, block_t, segments, warps, maxnreg


def _kernel_scales(delta_scale, a_scale, dim, dstate):
    """(delta_mult, delta_scale tensor or None, a_mult, a_scale (dim, N) tensor or None): float
    scales fold into the kernels' multipliers; a_mult carries log2(e) for exp2."""
    delta_mult, a_mult = 1.0, LOG2E
    if delta_scale is not None and not torch.is_tensor(delta_scale):
        delta_mult, delta_scale = float(delta_scale), None
    if a_scale is not None and not torch.is_tensor(a_scale):
        a_mult, a_scale = LOG2E * float(a_scale), None
    if a_scale is not None and a_scale.dim() == 1:
        a_scale = a_scale[:, None].expand(dim, dstate)
    return delta_mult, delta_scale, a_mult, a_scale


def _kept(M, keep_idx):
    """A variable B or C (batch, [G,] N, L) at the kept positions: (batch, [G,] N, K)."""
    idx = keep_idx.view(keep_idx.shape[0], *(1,) * (M.dim() - 2), keep_idx.shape[1])
    return M.gather(-1, idx.expand(*M.shape[:-1], keep_idx.shape[1]))


def _strides(x, n):
    return x.stride() if x is not None else (0,) * n


def _flag(x):
    return int(x is not None)


def channel_vectors(*xs):
    """The (dim,) parameters contiguous: the kernels read them at unit stride."""
    return tuple(x.contiguous() if torch.is_tensor(x) else x for x in xs)


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, delta_scale=None, a_scale=None, delta_threshold=None,
                       keep_idx=None, *, B_variable, C_variable, B_groups=1, C_groups=1,
                       chunk_size=None, block_d=None, block_t=None, num_segments=None,
                       num_warps=None, maxnreg=None):
    """Launches the forward kernels on checked inputs.

    Returns out (batch, dim, K or L) in u's dtype, last_state (batch, dim, N) and chunk_states
    (batch, dim, ⌈K/chunk_size⌉, N), the state entering every chunk; states have A's dtype
    (float32, or float64 for float64 inputs)."""
    batch, dim, L = u.shape
    dstate = A.shape[1]
    nvisit = keep_idx.shape[1] if keep_idx is not None else L
    chunk_size = chunk_size or CHUNK_SIZE
    n_chunks = triton.cdiv(nvisit, chunk_size)
    # Channels per group of B and C together: a channel block must not straddle a group.
    per_group = dim // math.lcm(B_groups, C_groups)
    auto_d, auto_t, auto_segs, auto_warps, auto_maxnreg = _launch_config(
        u, delta, per_group, batch, dim, nvisit)
    block_d, block_t = block_d or auto_d, block_t or auto_t
    num_warps = num_warps or auto_warps
    maxnreg = auto_maxnreg if maxnreg is None else maxnreg  # 0: no cap
    if chunk_size % block_t or per_group % block_d and per_group != dim:
        raise ValueError(f"block_t = {block_t} must divide chunk_size = {chunk_size} and "
                         f"block_d = {block_d} must divide the channels per group, {per_group}")
    n_tiles = triton.cdiv(nvisit, block_t)
    segs = min(num_segments or auto_segs, n_tiles)
    seg_tiles = triton.cdiv(n_tiles, segs)
    segs = triton.cdiv(n_tiles, seg_tiles)
    n_dblocks = triton.cdiv(dim, block_d)

    # States per unrolled group: all of them when N <= 16 (every Mamba-1 model), else groups
    # of at most 16, carried through a scratch between tiles.
    n_groups = triton.cdiv(dstate, MAX_GROUP)
    group = triton.cdiv(dstate, n_groups)

    dev, acc = u.device, A.dtype
    # The kernel reads variable B and C by visited index (vector loads): gather the kept ones.
    if keep_idx is not None:
        B, C = (_kept(M, keep_idx) if variable else M
                for M, variable in ((B, B_variable), (C, C_variable)))
    out = torch.empty((batch, dim, nvisit), dtype=u.dtype, device=dev)
    last_state = torch.empty((batch, dim, dstate), dtype=acc, device=dev)
    chunk_states = torch.empty((batch, dim, n_chunks, dstate), dtype=acc, device=dev)
    seg_states = torch.empty((batch, segs, dim, dstate), dtype=acc, device=dev)
    seg_dsum = torch.empty((batch, segs, dim), dtype=acc, device=dev)
    carry = torch.empty((batch * n_dblocks * segs * 2 * block_d * dstate if n_groups > 1 else 1,),
                        dtype=acc, device=dev)
    delta_mult, delta_scale, a_mult, a_scale = _kernel_scales(delta_scale, a_scale, dim, dstate)

    def ptr(x):
        # Absent parameters are never read (masked off); A stands in with their dtype.
        return x if x is not None else A

    args = (
        u, delta, A, B, C, ptr(D), ptr(z), ptr(delta_bias), ptr(delta_scale), ptr(a_scale),
        ptr(delta_threshold), ptr(keep_idx), ptr(initial_state),
        out, last_state, chunk_states, seg_states, seg_dsum, carry,
        dim, dstate, nvisit, dim // B_groups, dim // C_groups, n_dblocks, segs, seg_tiles, n_chunks,
        n_groups, delta_mult, a_mult,
        _flag(D), _flag(delta_bias), int(delta_softplus), _flag(delta_scale), _flag(a_scale),
        _flag(delta_threshold), _flag(initial_state),
        *u.stride(), *delta.stride(), *_strides(z, 3), *out.stride(), *A.stride(),
        *_bc_strides(B, B_variable), *_bc_strides(C, C_variable),
        *_strides(a_scale, 2), *_strides(keep_idx, 2), *_strides(initial_state, 3),
    )
    flags = dict(
        CHUNK=chunk_size, BLOCK_D=block_d, BLOCK_T=block_t, NG=group, MULTI_GROUP=n_groups > 1,
        HAS_Z=z is not None, HAS_KEEP_IDX=keep_idx is not None, B_VARIABLE=B_variable,
        C_VARIABLE=C_variable, num_warps=num_warps, **({"maxnreg": maxnreg} if maxnreg else {}),
    )
    if segs > 1:
        selective_scan_fwd_kernel[(batch * n_dblocks, segs - 1)](*args, STATE_ONLY=True, **flags)
    selective_scan_fwd_kernel[(batch * n_dblocks, segs)](*args, STATE_ONLY=False, **flags)
    return out, last_state, chunk_states


def _channel_splits(per_cgroup, block_d, programs, device):
    """Programs of the main backward kernel per group of channels: halves the channels per
    program (down to 8 blocks) while fewer than two programs per SM would run. Each split adds
    a (batch, N, K) float32 slice of partial dB/dC sums."""
    splits, target = 1, 2 * _sms(device)
    while (programs * splits < target and per_cgroup % (2 * splits) == 0
           and per_cgroup // (2 * splits) % block_d == 0
           and per_cgroup // (2 * splits) >= 8 * block_d):
        splits *= 2
    return splits


def _range_length(block_t, chunk_size, nvisit, programs_per_range, device):
    """Positions per program of the main backward kernel: the largest power-of-two multiple of
    block_t dividing chunk_size that still gives about two programs per SM."""
    length = chunk_size
    target = 2 * _sms(device)
    while length > block_t and programs_per_range * triton.cdiv(nvisit, length) < target:
        length //= 2
    return length


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                       initial_state, delta_scale, a_scale, delta_threshold, keep_idx,
                       chunk_states, *, B_variable, C_variable, B_groups=1, C_groups=1,
                       chunk_size=None, block_d=None, block_t=None, range_length=None,
                       channel_splits=None, num_warps=4):
    """Gradients of selective_scan_fwd's (out, last_state) on checked inputs, from the forward's
    chunk_states. dout (batch, dim, K or L) in any float dtype, dlast (batch, dim, N) or None.

    Returns the gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state, delta_scale,
    a_scale), each in its input's dtype and shape, None for an absent input or a float scale.
    With keep_idx the gradients of u, delta, z and variable B, C have full length L, zero at
    the positions not kept."""
    batch, dim, L = u.shape
    dstate = A.shape[1]
    nvisit = keep_idx.shape[1] if keep_idx is not None else L
    chunk_size = chunk_size or CHUNK_SIZE
    n_chunks = triton.cdiv(nvisit, chunk_size)
    n_cgroups = math.lcm(B_groups, C_groups)
    per_cgroup = dim // n_cgroups
    block_d = _block_d(block_d or (4 if INTERPRETED else 8), per_cgroup, dim)
    block_t = block_t or BWD_BLOCK_T
    if chunk_size % block_t or per_cgroup % block_d and per_cgroup != dim:
        raise ValueError(f"block_t = {block_t} must divide chunk_size = {chunk_size} and "
                         f"block_d = {block_d} must divide the channels per group, {per_cgroup}")
    # Channel groups of the main kernel: those of B and C, each split into equal parts when the
    # chunks alone leave the GPU idle.
    splits = channel_splits or _channel_splits(per_cgroup, block_d, batch * n_cgroups * n_chunks,
                                               u.device)
    if per_cgroup % splits or per_cgroup // splits % block_d and splits > 1:
        raise ValueError(f"channel_splits = {splits} must split the {per_cgroup} channels per "
                         f"group into multiples of block_d = {block_d}")
    n_cgroups, per_cgroup = n_cgroups * splits, per_cgroup // splits
    range_len = range_length or _range_length(block_t, chunk_size, nvisit, batch * n_cgroups,
                                              u.device)
    if chunk_size % range_len or range_len % block_t:
        raise ValueError(f"range_length = {range_len} must divide chunk_size = {chunk_size} and "
                         f"be a multiple of block_t = {block_t}")
    n_ranges = triton.cdiv(nvisit, range_len)
    n_tiles = triton.cdiv(nvisit, block_t)
    n_dblocks = triton.cdiv(dim, block_d)
    n_groups = triton.cdiv(dstate, MAX_GROUP)
    group = triton.cdiv(dstate, n_groups)
    dev, acc = u.device, A.dtype
    delta_mult, delta_scale_t, a_mult, a_scale_t = _kernel_scales(delta_scale, a_scale, dim, dstate)

    def ptr(x):
        return x if x is not None else A

    common_flags = (_flag(delta_bias), int(delta_softplus), _flag(delta_scale_t),
                    _flag(a_scale_t), _flag(delta_threshold))
    param_ptrs = (ptr(delta_bias), ptr(delta_scale_t), ptr(a_scale_t), ptr(delta_threshold),
                  ptr(keep_idx))

    # 1. The state entering every range.
    if range_len == chunk_size:
        range_states = chunk_states
    else:
        range_states = torch.empty((batch, dim, n_ranges, dstate), dtype=acc, device=dev)
        bwd_range_states_kernel[(batch * n_dblocks, n_chunks)](
            u, delta, A, B, *param_ptrs, chunk_states, range_states,
            dim, dstate, nvisit, dim // B_groups, n_dblocks, n_chunks, n_ranges, range_len,
            n_groups, delta_mult, a_mult, *common_flags,
            *u.stride(), *delta.stride(), *A.stride(), *_bc_strides(B, B_variable),
            *_strides(a_scale_t, 2), *_strides(keep_idx, 2),
            CHUNK=chunk_size, BLOCK_D=block_d, BLOCK_T=block_t, NG=group,
            HAS_KEEP_IDX=keep_idx is not None, B_VARIABLE=B_variable, num_warps=num_warps)

    # 2. The gradient entering every tile from the right, and ∂L/∂initial_state.
    gcarry = torch.empty((batch, dim, n_tiles, dstate), dtype=acc, device=dev)
    dh0 = torch.empty((batch, dim, dstate), dtype=acc, device=dev) if initial_state is not None else None
    bwd_grad_carries_kernel[(batch * n_dblocks,)](
        delta, A, C, ptr(z), *param_ptrs, dout, ptr(dlast), gcarry, ptr(dh0),
        dim, dstate, nvisit, dim // C_groups, n_dblocks, n_tiles, n_groups, delta_mult, a_mult,
        *common_flags, _flag(dlast), _flag(dh0),
        *delta.stride(), *_strides(z, 3), *dout.stride(), *A.stride(),
        *_bc_strides(C, C_variable), *_strides(a_scale_t, 2), *_strides(keep_idx, 2),
        *_strides(dlast, 3),
        BLOCK_D=block_d, BLOCK_T=block_t, NG=group, HAS_Z=z is not None,
        HAS_KEEP_IDX=keep_idx is not None, C_VARIABLE=C_variable, num_warps=num_warps)

    # 3. Everything else.
    def grad_like(x):
        # With keep_idx only the kept positions are written; the rest of the gradient is zero.
        make = torch.zeros if keep_idx is not None else torch.empty
        return make(x.shape, dtype=x.dtype, device=dev)

    du, ddelta = grad_like(u), grad_like(delta)
    dz = grad_like(z) if z is not None else None
    rows = batch * n_ranges
    dA = torch.zeros((rows, dim, dstate), dtype=acc, device=dev)
    dB = torch.zeros((batch, n_cgroups, dstate, nvisit) if B_variable else (rows, dim, dstate),
                     dtype=acc, device=dev)
    dC = torch.zeros((batch, n_cgroups, dstate, nvisit) if C_variable else (rows, dim, dstate),
                     dtype=acc, device=dev)
    dchan = torch.empty((rows, 3, dim), dtype=acc, device=dev)
    carry = torch.empty((rows * n_cgroups * 2 * block_d * dstate,), dtype=acc, device=dev)
    bwd_main_kernel[(rows, n_cgroups)](
        u, delta, A, B, C, ptr(D), ptr(z), *param_ptrs, dout, range_states, gcarry, carry,
        du, ddelta, ptr(dz), dA, dB, dC, dchan,
        dim, dstate, nvisit, dim // B_groups, dim // C_groups, per_cgroup, n_cgroups, n_ranges,
        range_len, n_tiles, dstate, delta_mult, a_mult, _flag(D), *common_flags,
        *u.stride(), *delta.stride(), *_strides(z, 3), *dout.stride(), *du.stride(),
        *ddelta.stride(), *_strides(dz, 3), *A.stride(), *_bc_strides(B, B_variable),
        *_bc_strides(C, C_variable), *_strides(a_scale_t, 2), *_strides(keep_idx, 2),
        BLOCK_D=block_d, BLOCK_T=block_t, NG=1, HAS_Z=z is not None,
        HAS_KEEP_IDX=keep_idx is not None, B_VARIABLE=B_variable, C_VARIABLE=C_variable,
        num_warps=num_warps)

    # Sums over the programs, in a fixed order.
    dA_eff = dA.sum(0)
    dchan = dchan.sum(0)
    grad_A = dA_eff * (a_scale_t if a_scale_t is not None else a_mult / LOG2E)
    grad_a_scale = None
    if torch.is_tensor(a_scale):
        grad_a_scale = (dA_eff * A).sum(1) if a_scale.dim() == 1 else dA_eff * A
    return (du, ddelta, grad_A, _bc_grad(dB, B, B_variable, B_groups, keep_idx),
            _bc_grad(dC, C, C_variable, C_groups, keep_idx),
            dchan[0] if D is not None else None, dz,
            dchan[1] if delta_bias is not None else None, dh0,
            dchan[2] if delta_scale_t is not None else None, grad_a_scale)


def _bc_grad(partial, M, variable, groups, keep_idx):
    """The gradient of B or C from the kernel's per-program float32 sums."""
    if not variable:
        return partial.sum(0)
    batch, n_cgroups, dstate, nvisit = partial.shape
    grad = partial.view(batch, groups, n_cgroups // groups, dstate, nvisit).sum(2)
    if M.dim() == 3:
        grad = grad[:, 0]
    if keep_idx is not None:
        full = torch.zeros(M.shape, dtype=grad.dtype, device=grad.device)
        idx = keep_idx.view(batch, *(1,) * (M.dim() - 2), nvisit).expand(*grad.shape)
        grad = full.scatter_(-1, idx, grad)
    return grad.to(M.dtype)


def split_scale(scale):
    """A scale as the custom ops take it: (tensor or None, float or None)."""
    return (scale, None) if torch.is_tensor(scale) else (None, scale)


def join_scale(tensor, number):
    """The inverse of split_scale."""
    return tensor if tensor is not None else number


# The scan as two torch custom ops, so that torch.compile sees it as one opaque node (no graph
# break) and autograd connects them. Options are plain arguments; a scale arrives as a tensor
# or a float, never both.
@torch.library.custom_op("fusedscan::selective_scan_fwd", mutates_args=())
def selective_scan_fwd_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
    initial_state: Optional[Tensor], delta_scale_t: Optional[Tensor],
    delta_scale_f: Optional[float], a_scale_t: Optional[Tensor], a_scale_f: Optional[float],
    delta_threshold: Optional[Tensor], keep_idx: Optional[Tensor], B_variable: bool,
    C_variable: bool, B_groups: int, C_groups: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, last_state, chunk_states) of selective_scan_fwd."""
    return selective_scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
        join_scale(delta_scale_t, delta_scale_f), join_scale(a_scale_t, a_scale_f),
        delta_threshold, keep_idx, B_variable=B_variable, C_variable=C_variable, B_groups=B_groups,
        C_groups=C_groups)


@selective_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, delta_scale_t,
      delta_scale_f, a_scale_t, a_scale_f, delta_threshold, keep_idx, B_variable, C_variable,
      B_groups, C_groups):
    batch, dim, L = u.shape
    nvisit = keep_idx.shape[1] if keep_idx is not None else L
    dstate = A.shape[1]
    return (u.new_empty((batch, dim, nvisit)), A.new_empty((batch, dim, dstate)),
            A.new_empty((batch, dim, (nvisit + CHUNK_SIZE - 1) // CHUNK_SIZE, dstate)))


GRAD_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state",
               "delta_scale_t", "a_scale_t")


@torch.library.custom_op("fusedscan::selective_scan_bwd", mutates_args=())
def selective_scan_bwd_op(
    dout: Tensor, dlast: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor,
    C: Tensor, D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
    delta_softplus: bool, initial_state: Optional[Tensor], delta_scale_t: Optional[Tensor],
    delta_scale_f: Optional[float], a_scale_t: Optional[Tensor], a_scale_f: Optional[float],
    delta_threshold: Optional[Tensor], keep_idx: Optional[Tensor], chunk_states: Tensor,
    B_variable: bool, C_variable: bool, B_groups: int, C_groups: int,
) -> list[Tensor]:
    """The gradients of GRAD_INPUTS from selective_scan_bwd; an empty tensor for an absent
    input (custom ops return no None)."""
    grads = selective_scan_bwd(
        dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
        join_scale(delta_scale_t, delta_scale_f), join_scale(a_scale_t, a_scale_f),
        delta_threshold, keep_idx, chunk_states, B_variable=B_variable, C_variable=C_variable,
        B_groups=B_groups, C_groups=C_groups)
    # The per-channel gradients are rows of one buffer; outputs must not alias each other.
    return [g.clone() if g is not None and g._base is not None else
            g if g is not None else u.new_empty(0) for g in grads]


@selective_scan_bwd_op.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
      delta_scale_t, delta_scale_f, a_scale_t, a_scale_f, delta_threshold, keep_idx,
      chunk_states, B_variable, C_variable, B_groups, C_groups):
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state, delta_scale_t, a_scale_t)
    return [torch.empty_like(x) if x is not None else u.new_empty(0) for x in inputs]


_FWD_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus",
             "initial_state", "delta_scale_t", "delta_scale_f", "a_scale_t", "a_scale_f",
             "delta_threshold", "keep_idx", "B_variable", "C_variable", "B_groups", "C_groups")
_SAVED = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state",
          "delta_scale_t", "a_scale_t", "delta_threshold", "keep_idx")


def _setup_context(ctx, inputs, output):
    args = dict(zip(_FWD_ARGS, inputs))
    ctx.options = {k: args[k] for k in ("delta_softplus", "delta_scale_f", "a_scale_f",
                                         "B_variable", "C_variable", "B_groups", "C_groups")}
    ctx.save_for_backward(*(args[k] for k in _SAVED), output[2])
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, dout, dlast, _):
    saved = dict(zip(_SAVED + ("chunk_states",), ctx.saved_tensors))
    u, keep_idx = saved["u"], saved["keep_idx"]
    if dout is None:
        nvisit = keep_idx.shape[1] if keep_idx is not None else u.shape[2]
        dout = u.new_zeros((*u.shape[:2], nvisit))
    grads = selective_scan_bwd_op(
        dout, dlast, *(saved[k] for k in _SAVED[:8]), ctx.options["delta_softplus"],
        saved["initial_state"], saved["delta_scale_t"], ctx.options["delta_scale_f"],
        saved["a_scale_t"], ctx.options["a_scale_f"], saved["delta_threshold"], keep_idx,
        saved["chunk_states"], ctx.options["B_variable"], ctx.options["C_variable"],
        ctx.options["B_groups"], ctx.options["C_groups"])
    by_name = {k: g if saved[k] is not None else None for k, g in zip(GRAD_INPUTS, grads)}
    return tuple(by_name.get(k) for k in _FWD_ARGS)


selective_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


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
    was set before fusedscan was imported.

    Differentiable in every floating input (u, delta, A, B, C, D, z, delta_bias, initial_state,
    and delta_scale, a_scale when tensors) through both out and last_state; delta_threshold and
    keep_idx get no gradient. Where Δ̂ <= delta_threshold the gradient to delta is 0; with
    keep_idx the gradients of u, delta, z and variable B, C are zero at positions not kept.
    Gradients come back in each input's dtype; the backward pass is deterministic.

    The kernels run as the torch custom ops fusedscan::selective_scan_fwd / _bwd, so
    torch.compile traces the call without a graph break; only keep_idx's check (strictly
    increasing, in range) reads the indices on the host and breaks the graph.
    """
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                initial_state, delta_scale, a_scale, delta_threshold, keep_idx)


def scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state,
         delta_scale, a_scale, delta_threshold, keep_idx, trust_keep_idx=False):
    """selective_scan_ext's checks and launch. trust_keep_idx=True skips keep_idx's value
    check (the one host read), for indices made by ``decimate``, which are valid by
    construction; fusedscan.models uses it so that a compiled model has no graph break."""
    B_variable, B_groups, C_variable, C_groups = check_inputs(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state,
        delta_scale, a_scale, delta_threshold, keep_idx, INTERPRETED, trust_keep_idx)
    D, delta_bias, delta_scale, delta_threshold = channel_vectors(D, delta_bias, delta_scale,
                                                                  delta_threshold)
    out, last_state, _ = selective_scan_fwd_op(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
        *split_scale(delta_scale), *split_scale(a_scale), delta_threshold, keep_idx, B_variable,
        C_variable, B_groups, C_groups)
    return (out, last_state) if return_last_state else out
