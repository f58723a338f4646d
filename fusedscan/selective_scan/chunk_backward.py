"""Chunked backward kernels of the extension-aware selective scan.

For one (batch row, channel d, state n), over the visited positions t: a_t = exp(Δ̂_t·A_eff),
b_t = Δ̂_t·u_t·B_t, h_t = a_t·h_{t−1} + b_t, dy_t = ∂L/∂y_t (dout·silu(z) with z), and
g_t = ∂L/∂h_t = C_t·dy_t + a_{t+1}·g_{t+1}, with ∂L/∂last_state added at the last position. Then

    ∂L/∂u_t = dy_t·D + Σ_n g_t·Δ̂_t·B_t         ∂L/∂B_t = Σ_d g_t·Δ̂_t·u_t     ∂L/∂C_t = Σ_d dy_t·h_t
    ∂L/∂Δ̂_t = Σ_n g_t·(u_t·B_t + A_eff·a_t·h_{t−1}),   where a_t·h_{t−1} = h_t − b_t
    ∂L/∂A_eff = Σ_t g_t·a_t·h_{t−1}·Δ̂_t          ∂L/∂initial_state = a_0·g_0

and Δ̂'s chain (threshold mask, scale, softplus, bias) gives ∂L/∂delta and the parameters.

The visited positions are cut into segments of BLOCK_T positions (128 on a GPU), and segments
into ranges of range_len (a power-of-two multiple of BLOCK_T that divides CHUNK), one per program.
The first two kernels take the forward kernel's layout: one channel row per thread and a tile of
16 bytes of positions in its registers, so that scans over positions run inside each thread
(the main kernel's float32 tiles of 8 positions put a row on two threads, 16 bytes each).
1. `bwd_range_aggregates_kernel`, one program per (batch row, block of channels, range), walks
   its range backwards, one exp(Δ̂·A) per position and state for both directions: for every
   segment the gradient reaching it from the rest of the range (G = a_{t+1}·g_{t+1} at the
   segment's last position t) with the Σ Δ̂ between, and for the range the gradient it passes to
   its left from zero on its right, its Σ Δ̂ and, where a later range of its chunk needs it, the
   state it ends in from a zero start (elsewhere it reads no B).
2. `bwd_main_kernel`: one program per (batch row, block of channels, range). It first folds the
   range aggregates: the chunk's earlier ranges into the state the forward saved at the chunk's
   start (every CHUNK positions), giving the state entering its range, and the later ranges
   into the gradient entering it from the right (range 0's programs go on to
   ∂L/∂initial_state). Per segment, a first pass from the segment's start state keeps the state
   entering each tile in the program's scratch; a second pass walks the tiles backwards from the
   segment's G (kernel 1's plus the range's carry decayed across the rest of the range),
   rescans each tile's states from the kept one, runs the reverse scan for g and writes du,
   ddelta and dz. The states go in unrolled groups (main_config), their gradient carries and
   sums through the scratch when there are several. The sums over positions (dA, dD,
   ddelta_bias, ddelta_scale, fixed dB and dC) are per-channel registers of the program; the
   sums over channels (variable dB, dC) are reduced over the program's block (with blocks of
   whole warps, all of a group's states and positions at once by warp_sums within each warp,
   then between the warps per group or, by default, once per tile through the scratch) and
   stored per block.
3. `bwd_sums_kernel` sums those partial sums over the programs in a fixed order, casting the
   variable dB and dC to their dtypes: no atomics, the gradients are the same, bit for bit, on
   every run.
All three keep what they pass on in one workspace buffer, at offsets fixed by the plan.

Kernel 1 needs only each tile's aggregates. One scan of (a, Δ̂·u·B) from zero gives the prefix
products p_s = Π_{m≤s} a_m and the states, so the tile's end state from zero and
    G_before = Σ_s p_s·C_s·dy_s + p_end·G_after.
"""

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fusedscan.selective_scan.chunk import (
    CHUNK_SIZE, MAX_GROUP, bc_source, bc_strides, fit_block_d, fold_segments, kept_bc, load_As,
    load_bc, load_states, row_setup, scan_states, store_states, tile_columns, tile_inputs,
)
from fusedscan.utils.device import INTERPRETED, multiprocessor_count
from fusedscan.utils.kernels import (
    FLAG_DLAST, FLAG_INITIAL_STATE, FLAG_SOFTPLUS, LN2, LOG2E, channel_params, delta_hat, load_D,
    option_flags, scan_combine,
)
from fusedscan.utils.launch import (
    LaunchPlan, SignatureCache, contiguous_strides, kernel_scales, launch_signature, strides,
)
from fusedscan.utils.warp_sums import lane_labels, warp_rows, warp_sums, warps_total

# Positions per segment of the backward kernels (per stored gradient carry of kernel 1).
BWD_BLOCK_T = 16 if INTERPRETED else 128
# The main kernel's reverse scan as a forward scan of a flipped tile (_reverse_scan).
REVERSE_BY_FLIP = tl.constexpr(not INTERPRETED)


@triton.jit
def _reverse_combine(f1, p1, r1, f2, p2, r2):
    """Reverse scan for g_t = c_t + a_{t+1}·g_{t+1} without shifting a by one position. A segment
    [t, s] is (a_t, Π_{t<m≤s} a_m, Σ_{t≤k≤s} Π_{t<m≤k} a_m · c_k); (f1, p1, r1) is the later
    segment, (f2, p2, r2) the earlier one (the reverse scan's running value comes first)."""
    m = p2 * f1
    return f2, m * p1, r2 + m * r1


@triton.jit
def _reverse_scan(a, c):
    """g_t = c_t + a_{t+1}·g_{t+1} along a tile's positions (axis 1), g past the tile taken as 0.
    On a GPU, a forward scan of the tile flipped in place: Triton's reverse=True scan exchanges
    every value across the warp's lanes, the rows, even when the positions are in one thread.
    The interpreter keeps reverse=True, the same sums in the same order: there tl.flip's xor
    reductions run in Python and made the backward's tests 1.4x slower."""
    ones = tl.full(a.shape, 1.0, a.dtype)
    if REVERSE_BY_FLIP:
        _, _, g = tl.associative_scan((tl.flip(a, 1), ones, tl.flip(c, 1)), axis=1,
                                      combine_fn=_reverse_combine)
        g = tl.flip(g, 1)
    else:
        _, _, g = tl.associative_scan((a, ones, c), axis=1, combine_fn=_reverse_combine,
                                      reverse=True)
    return g


@triton.jit
def _load_dy(dout_rows, z_rows, j, pos, stride_dout_l, stride_z_l, col_mask, ACC: tl.constexpr,
             HAS_Z: tl.constexpr):
    """(dy, dout, z, sigmoid(z)) of a tile; dout is indexed by visited index, z by position."""
    dout = tl.load(dout_rows + j[None, :] * stride_dout_l, mask=col_mask, other=0.0).to(ACC)
    if HAS_Z:
        z = tl.load(z_rows + pos[None, :] * stride_z_l, mask=col_mask, other=0.0).to(ACC)
        sig = tl.sigmoid(z)
        dy = dout * z * sig
    else:
        z = dout
        sig = dout
        dy = dout
    return dy, dout, z, sig


@triton.jit
def _aggregate_tile(j0, j_hi, seqlen, Hs, Ps, Gs, As, n0, dstate, rows, row_ok, cols, u_rows,
                    delta_rows, z_rows, dout_rows, keep_row, stride_u_l, stride_delta_l,
                    stride_z_l, stride_dout_l, stride_keep_k, B_src, stride_B_n, stride_B_l,
                    C_src, stride_C_n, stride_C_l, delta_bias, delta_scale, delta_threshold,
                    flags, NG: tl.constexpr, MASK_T: tl.constexpr, HAS_Z: tl.constexpr,
                    HAS_KEEP_IDX: tl.constexpr, B_VARIABLE: tl.constexpr,
                    C_VARIABLE: tl.constexpr, WITH_H: tl.constexpr):
    """The tile at j0 joined in front of the positions after it (states n0 .. n0+NG-1): with
    the tile's prefix products p_s = Π_{m≤s} a_m, the gradient Gs entering them from the right
    becomes Σ_s p_s·C_s·dy_s + p_T·Gs. WITH_H, p comes from the same scan as the tile's end
    state h_T from zero, and the state Hs that those positions hand on from a zero start
    becomes Hs + Ps·h_T, their decay Ps becomes Ps·p_T; otherwise Hs and Ps pass unchanged and
    B is not read. Also returns the tile's Σ Δ̂."""
    ACC = Gs[0].dtype
    j, pos, col_ok, col_mask, _ = tile_columns(j0, j_hi, cols, rows, keep_row, stride_keep_k,
                                                seqlen, MASK_T, HAS_KEEP_IDX)
    u = tl.load(u_rows + pos[None, :] * stride_u_l, mask=col_mask, other=0.0).to(ACC)
    dt = tl.load(delta_rows + pos[None, :] * stride_delta_l, mask=col_mask, other=0.0).to(ACC)
    dt, _, _ = delta_hat(dt, delta_bias, delta_scale, delta_threshold, flags)
    if MASK_T:
        dt = tl.where(col_mask, dt, 0.0)
    dtu = dt * u
    dy, _, _, _ = _load_dy(dout_rows, z_rows, j, pos, stride_dout_l, stride_z_l, col_mask, ACC,
                           HAS_Z)
    zero_rows = (rows * 0)[:, None]
    is_last = (cols == cols.shape[0] - 1)[None, :]
    new_Hs = ()
    new_Ps = ()
    new_Gs = ()
    for i in tl.static_range(NG):
        state_ok = n0 + i < dstate
        C_n = load_bc(C_src, n0 + i, stride_C_n, zero_rows + j[None, :] * stride_C_l, row_ok,
                      state_ok, col_mask, ACC, MASK_T, C_VARIABLE)
        a = tl.exp2(dt * As[i][:, None])
        if WITH_H:
            B_n = load_bc(B_src, n0 + i, stride_B_n, zero_rows + j[None, :] * stride_B_l,
                          row_ok, state_ok, col_mask, ACC, MASK_T, B_VARIABLE)
            p, h = tl.associative_scan((a, dtu * B_n), axis=1, combine_fn=scan_combine)
            p_T = tl.sum(tl.where(is_last, p, -0.0), axis=1)
            new_Hs = new_Hs + (Hs[i] + Ps[i] * tl.sum(tl.where(is_last, h, -0.0), axis=1),)
            new_Ps = new_Ps + (Ps[i] * p_T,)
        else:
            p = tl.cumprod(a, axis=1)
            p_T = tl.sum(tl.where(is_last, p, -0.0), axis=1)
            new_Hs = new_Hs + (Hs[i],)
            new_Ps = new_Ps + (Ps[i],)
        new_Gs = new_Gs + (tl.sum(p * (C_n * dy), axis=1) + p_T * Gs[i],)
    return new_Hs, new_Ps, new_Gs, tl.sum(dt, axis=1)


@triton.jit(noinline=True)
def _range_group_aggregates(g, ptrs, sizes, offsets, strides, SEG: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, NG: tl.constexpr,
                            HAS_Z: tl.constexpr, HAS_KEEP_IDX: tl.constexpr,
                            B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr,
                            WITH_H: tl.constexpr):
    """bwd_range_aggregates_kernel's work for its range and states g·NG .. g·NG+NG-1, the
    kernel's arguments packed in tuples: walks the range's positions backwards and stores each
    segment's gcarry (and with g = 0 its seg_decay), the range's range_agg, range_hend (WITH_H,
    else zero) and (g = 0) range_decay. A function of its own (noinline takes scalars only):
    Triton's coalescing pass, whose time grows about as the square of a function's size, then
    sees the two forms (WITH_H or not) one at a time."""
    (u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, z_ptr, delta_bias_ptr, delta_scale_ptr, a_scale_ptr,
     delta_threshold_ptr, keep_idx_ptr, dout_ptr, dlast_ptr, work_ptr) = ptrs
    (delta_mult, a_mult, dim, dstate, seqlen, nvisit, dim_per_group_B, dim_per_group_C,
     n_dblocks, n_gtiles, n_ranges, range_len, flags) = sizes
    off_gcarry, off_seg_decay, off_range_agg, off_range_hend, off_range_decay = offsets
    (stride_u_b, stride_u_d, stride_u_l, stride_delta_b, stride_delta_d, stride_delta_l,
     stride_z_b, stride_z_d, stride_z_l, stride_dout_b, stride_dout_d, stride_dout_l,
     stride_A_d, stride_A_n, stride_B_b, stride_B_g, stride_B_n, stride_B_l, stride_C_b,
     stride_C_g, stride_C_n, stride_C_l, stride_as_d, stride_as_n, stride_keep_b, stride_keep_k,
     stride_dlast_b, stride_dlast_d, stride_dlast_n) = strides
    b, d0, rows, row_ok, rows64, in_rows64 = row_setup(tl.program_id(0), n_dblocks, dim, BLOCK_D)
    r = tl.program_id(1)
    cols = tl.arange(0, BLOCK_T)
    u_rows = (u_ptr + b * stride_u_b + in_rows64 * stride_u_d)[:, None]
    delta_rows = (delta_ptr + b * stride_delta_b + in_rows64 * stride_delta_d)[:, None]
    z_rows = (z_ptr + b * stride_z_b + in_rows64 * stride_z_d)[:, None]
    dout_rows = (dout_ptr + b * stride_dout_b + in_rows64 * stride_dout_d)[:, None]
    keep_row = keep_idx_ptr + b * stride_keep_b
    B_src = bc_source(B_ptr, b, d0, rows64, dim_per_group_B, stride_B_b, stride_B_g, B_VARIABLE)
    C_src = bc_source(C_ptr, b, d0, rows64, dim_per_group_C, stride_C_b, stride_C_g, C_VARIABLE)
    delta_bias, delta_scale, delta_threshold = channel_params(
        rows, row_ok, delta_bias_ptr, delta_scale_ptr, delta_threshold_ptr, flags, delta_mult)
    g_rows = work_ptr + off_gcarry + (b * dim + rows64) * n_gtiles * dstate
    decay_rows = work_ptr + off_seg_decay + b * n_gtiles * dim + rows64
    range_rows = (b * n_ranges + r) * dim + rows64
    dlast_rows = dlast_ptr + b * stride_dlast_b + rows64 * stride_dlast_d
    from_dlast = (r == n_ranges - 1) & ((flags & FLAG_DLAST) != 0)
    n0 = g * NG
    Gs = ()
    Hs = ()
    Ps = ()
    for i in tl.static_range(NG):
        Gs = Gs + (tl.load(dlast_rows + (n0 + i) * stride_dlast_n,
                           mask=row_ok & (n0 + i < dstate) & from_dlast, other=0.0),)
        Hs = Hs + (tl.zeros([BLOCK_D], A_ptr.dtype.element_ty),)
        Ps = Ps + (tl.full([BLOCK_D], 1.0, A_ptr.dtype.element_ty),)
    As = load_As(A_ptr + rows64 * stride_A_d, stride_A_n, a_scale_ptr + rows64 * stride_as_d,
                 stride_as_n, flags, a_mult, n0, dstate, row_ok, NG)

    # In whole segments, so that the compiler sees every tile start aligned for vector loads.
    j_lo = r * (range_len // SEG) * SEG
    j_hi = tl.minimum(j_lo + range_len, nvisit)
    after = tl.zeros([BLOCK_D], A_ptr.dtype.element_ty)
    n_segs = tl.cdiv(j_hi - j_lo, SEG)
    for s_rev in range(n_segs):
        s0 = j_lo + (n_segs - 1 - s_rev) * SEG
        s_hi = tl.minimum(s0 + SEG, j_hi)
        store_states(g_rows + (s0 // SEG) * dstate, n0, dstate, Gs, row_ok, NG)
        tl.store(decay_rows + (s0 // SEG) * dim, after, mask=row_ok & (g == 0))
        n_full = (s_hi - s0) // BLOCK_T
        # Only the last range can end inside a tile, and it never needs its end state.
        if (not WITH_H) and s0 + n_full * BLOCK_T < s_hi:
            Hs, Ps, Gs, total = _aggregate_tile(
                s0 + n_full * BLOCK_T, s_hi, seqlen, Hs, Ps, Gs, As, n0, dstate, rows, row_ok,
                cols, u_rows, delta_rows, z_rows, dout_rows, keep_row, stride_u_l,
                stride_delta_l, stride_z_l, stride_dout_l, stride_keep_k, B_src, stride_B_n,
                stride_B_l, C_src, stride_C_n, stride_C_l, delta_bias, delta_scale,
                delta_threshold, flags, NG, True, HAS_Z, HAS_KEEP_IDX, B_VARIABLE, C_VARIABLE,
                WITH_H)
            after += total
        for k_rev in range(n_full):
            Hs, Ps, Gs, total = _aggregate_tile(
                s0 + (n_full - 1 - k_rev) * BLOCK_T, s_hi, seqlen, Hs, Ps, Gs, As, n0, dstate,
                rows, row_ok, cols, u_rows, delta_rows, z_rows, dout_rows, keep_row, stride_u_l,
                stride_delta_l, stride_z_l, stride_dout_l, stride_keep_k, B_src, stride_B_n,
                stride_B_l, C_src, stride_C_n, stride_C_l, delta_bias, delta_scale,
                delta_threshold, flags, NG, False, HAS_Z, HAS_KEEP_IDX, B_VARIABLE, C_VARIABLE,
                WITH_H)
            after += total
    store_states(work_ptr + off_range_agg + range_rows * dstate, n0, dstate, Gs, row_ok, NG)
    store_states(work_ptr + off_range_hend + range_rows * dstate, n0, dstate, Hs, row_ok, NG)
    tl.store(work_ptr + off_range_decay + range_rows, after, mask=row_ok & (g == 0))


@triton.jit(do_not_specialize=["flags", "n_dblocks", "n_gtiles", "n_ranges", "chunk_ranges",
                               "range_len", "n_groups", "off_gcarry", "off_seg_decay",
                               "off_range_agg", "off_range_hend", "off_range_decay"])
def bwd_range_aggregates_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, z_ptr, delta_bias_ptr, delta_scale_ptr, a_scale_ptr,
    delta_threshold_ptr, keep_idx_ptr, dout_ptr, dlast_ptr, work_ptr, delta_mult, a_mult,
    dim, dstate, seqlen, nvisit, dim_per_group_B, dim_per_group_C, n_dblocks, n_gtiles,
    n_ranges, chunk_ranges, range_len, n_groups, flags, off_gcarry, off_seg_decay, off_range_agg,
    off_range_hend, off_range_decay,
    stride_u_b, stride_u_d, stride_u_l,
    stride_delta_b, stride_delta_d, stride_delta_l,
    stride_z_b, stride_z_d, stride_z_l,
    stride_dout_b, stride_dout_d, stride_dout_l,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n, stride_B_l,
    stride_C_b, stride_C_g, stride_C_n, stride_C_l,
    stride_as_d, stride_as_n,
    stride_keep_b, stride_keep_k,
    stride_dlast_b, stride_dlast_d, stride_dlast_n,
    SEG: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, NG: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_KEEP_IDX: tl.constexpr, B_VARIABLE: tl.constexpr,
    C_VARIABLE: tl.constexpr,
):
    """Grid (batch · n_dblocks, n_ranges), in the forward kernel's layout (one channel row per
    thread, BLOCK_T positions in its registers). Walks range r's tiles backwards, from
    ∂L/∂last_state in the last range and from zero in the others, computing each tile's
    exp(Δ̂·A) once for both directions, and writes for every segment k (SEG positions) the
    gradient entering it from the rest of its range, gcarry (batch, dim, n_gtiles, N), and
    seg_decay (batch, n_gtiles, dim), the Σ Δ̂ of the range's positions after it; for the range,
    range_agg (batch, n_ranges, dim, N), the gradient it passes to its left from zero on its
    right, range_hend (same shape), the state it ends in from a zero start (written only where a
    later range of its chunk (chunk_ranges ranges) folds it; zero elsewhere), and range_decay
    (batch, n_ranges, dim), its Σ Δ̂; each at its offset off_* in the workspace work_ptr. B and
    C are read by visited index (with keep_idx, the kept positions' copies). With X the gradient
    entering the range from the right (_range_carries), the gradient entering segment k is
    gcarry + exp(A_eff·seg_decay)·X; the main kernel folds range_hend into the state entering
    each range (_range_start_states)."""
    r = tl.program_id(1)
    # Only a range that a later range of its chunk folds (_range_start_states) needs its end
    # state; the others scan the decay products alone and read no B.
    needs_hend = ((r + 1) % chunk_ranges != 0) & (r < n_ranges - 1)
    args = ((u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, z_ptr, delta_bias_ptr, delta_scale_ptr,
             a_scale_ptr, delta_threshold_ptr, keep_idx_ptr, dout_ptr, dlast_ptr, work_ptr),
            (delta_mult, a_mult, dim, dstate, seqlen, nvisit, dim_per_group_B, dim_per_group_C,
             n_dblocks, n_gtiles, n_ranges, range_len, flags),
            (off_gcarry, off_seg_decay, off_range_agg, off_range_hend, off_range_decay),
            (stride_u_b, stride_u_d, stride_u_l, stride_delta_b, stride_delta_d, stride_delta_l,
             stride_z_b, stride_z_d, stride_z_l, stride_dout_b, stride_dout_d, stride_dout_l,
             stride_A_d, stride_A_n, stride_B_b, stride_B_g, stride_B_n, stride_B_l, stride_C_b,
             stride_C_g, stride_C_n, stride_C_l, stride_as_d, stride_as_n, stride_keep_b,
             stride_keep_k, stride_dlast_b, stride_dlast_d, stride_dlast_n))
    for g in range(n_groups):
        if needs_hend:
            _range_group_aggregates(g, *args, SEG, BLOCK_D, BLOCK_T, NG, HAS_Z, HAS_KEEP_IDX,
                                    B_VARIABLE, C_VARIABLE, True)
        else:
            _range_group_aggregates(g, *args, SEG, BLOCK_D, BLOCK_T, NG, HAS_Z, HAS_KEEP_IDX,
                                    B_VARIABLE, C_VARIABLE, False)


@triton.jit
def _range_start_states(b, r, n_ranges, chunk_ranges, n0, dstate, dim, As, rows64, row_ok,
                        chunk_states_ptr, range_hend_ptr, range_decay_ptr, NG: tl.constexpr):
    """States n0 .. n0+NG-1 entering range r: the forward's saved state at the start of the
    range's chunk (chunk_ranges ranges per chunk), carried across the chunk's earlier ranges."""
    c = r // chunk_ranges
    n_chunks = tl.cdiv(n_ranges, chunk_ranges)
    hs = load_states(chunk_states_ptr + ((b * dim + rows64) * n_chunks + c) * dstate, n0, dstate,
                     row_ok, NG)
    return fold_segments(hs, As, c * chunk_ranges, 1, r - c * chunk_ranges, n0, dstate, dim,
                         row_ok, b * n_ranges * dim + rows64, range_decay_ptr, range_hend_ptr, NG)


@triton.jit
def _range_carries(b, r, n_ranges, n0, dstate, dim, As, rows64, row_ok, range_agg_ptr,
                  range_decay_ptr, NG: tl.constexpr):
    """The gradients of states n0 .. n0+NG-1 entering range r from the right (zero for the
    last range; ∂L/∂last_state is in that range's own walk): the later ranges folded."""
    zeros = ()
    for i in tl.static_range(NG):
        zeros = zeros + (tl.zeros(row_ok.shape, As[0].dtype),)
    return fold_segments(zeros, As, n_ranges - 1, -1, n_ranges - 1 - r, n0, dstate, dim, row_ok,
                         b * n_ranges * dim + rows64, range_decay_ptr, range_agg_ptr, NG)


@triton.jit
def _store_dh0(b, n_ranges, n0, dstate, dim, Xs, As, rows64, row_ok, range_agg_ptr,
               range_decay_ptr, dh0_ptr, NG: tl.constexpr):
    """∂L/∂initial_state: the gradients Xs entering range 0 from the right carried across it."""
    dh0 = fold_segments(Xs, As, 0, 1, 1, n0, dstate, dim, row_ok, b * n_ranges * dim + rows64,
                        range_decay_ptr, range_agg_ptr, NG)
    store_states(dh0_ptr + (b * dim + rows64) * dstate, n0, dstate, dh0, row_ok, NG)


@triton.jit
def _segment_carries(G_rows, decay, Xs, As, n0, dstate, row_ok, NG: tl.constexpr):
    """Gradients of states n0 .. n0+NG-1 entering a segment from the right: kernel 1's part
    from the rest of the range plus the range's carries Xs decayed across it."""
    Gs = load_states(G_rows, n0, dstate, row_ok, NG)
    out = ()
    for i in tl.static_range(NG):
        out = out + (Gs[i] + tl.exp2(As[i] * decay) * Xs[i],)
    return out


@triton.jit
def _slot_states(slot_rows, k, n0, nslot, NG: tl.constexpr):
    """States n0 .. n0+NG-1 of slot k of a program's scratch, laid out [slot, state, channel]
    from the pointers slot_rows, [BLOCK_D], or [BLOCK_D, 2] with states 2i and 2i + 1
    interleaved per channel (_paired_slots)."""
    hs = ()
    if len(slot_rows.shape) == 1:
        for i in tl.static_range(NG):
            hs = hs + (tl.load(slot_rows + (k * nslot + n0 + i) * slot_rows.shape[0]),)
    else:
        for i in tl.static_range(0, NG, 2):
            h0, h1 = tl.split(tl.load(slot_rows + (k * nslot + n0 + i) * slot_rows.shape[0]))
            hs = hs + (h0, h1)
    return hs


@triton.jit
def _row_states(slot_rows, k, n0, nslot, row_ok, NG: tl.constexpr):
    """_slot_states, zero in the rows past `dim` (whose first pass read the last channel)."""
    hs = _slot_states(slot_rows, k, n0, nslot, NG)
    out = ()
    for i in tl.static_range(NG):
        out = out + (tl.where(row_ok, hs[i], 0.0),)
    return out


@triton.jit
def _store_slot(slot_rows, k, n0, nslot, hs, NG: tl.constexpr):
    if len(slot_rows.shape) == 1:
        for i in tl.static_range(NG):
            tl.store(slot_rows + (k * nslot + n0 + i) * slot_rows.shape[0], hs[i])
    else:
        for i in tl.static_range(0, NG, 2):
            tl.store(slot_rows + (k * nslot + n0 + i) * slot_rows.shape[0],
                     tl.join(hs[i], hs[i + 1]))


@triton.jit
def _paired_slots(scratch, BLOCK_D: tl.constexpr, NG: tl.constexpr, WARP_ROWS: tl.constexpr):
    """Pointers to the scratch's channels for _slot_states and _store_slot. When a channel's
    row spans two lanes (WARP_ROWS 16) and the states go in pairs, [BLOCK_D, 2]: two states
    per channel side by side, loaded and stored together in the tile's own layout, each lane
    of a row taking one of them (a vector of one value per channel is stored from a layout of
    one channel per lane, reached through shared memory). Else [BLOCK_D]."""
    if WARP_ROWS == 16 and NG % 2 == 0:
        return scratch + tl.arange(0, BLOCK_D)[:, None] * 2 + tl.arange(0, 2)[None, :]
    else:
        return scratch + tl.arange(0, BLOCK_D)


@triton.jit
def _added(xs, ys, NG: tl.constexpr):
    out = ()
    for i in tl.static_range(NG):
        out = out + (xs[i] + ys[i],)
    return out


@triton.jit
def _state_tile(
    k, j0, j_hi, seqlen, hs, As, rows, row_ok, cols, u_rows, delta_rows, keep_row, stride_u_l,
    stride_delta_l, stride_keep_k, A_rows, stride_A_n, a_scale_rows, stride_as_n, a_mult, B_src,
    stride_B_n, stride_B_l, delta_bias, delta_scale, delta_threshold, D, flags, slot_rows, dstate,
    nslot, n_groups,
    BLOCK_T: tl.constexpr, NG: tl.constexpr, MULTI_GROUP: tl.constexpr, MASK_T: tl.constexpr,
    HAS_KEEP_IDX: tl.constexpr, B_VARIABLE: tl.constexpr,
):
    """First pass over tile k of a segment: keeps the states entering it in slot k. One group:
    from the register carries hs, returning those after the tile; several: slot k → k + 1."""
    j, pos, col_ok, col_mask, dt, dtu, y, bc_offs_B, bc_offs, is_first, is_last = tile_inputs(
        j0, j_hi, seqlen, rows, cols, u_rows, delta_rows, keep_row, stride_u_l, stride_delta_l,
        stride_keep_k, stride_B_l, stride_B_l, delta_bias, delta_scale, delta_threshold, D, flags,
        BLOCK_T, MASK_T, HAS_KEEP_IDX)
    if not MULTI_GROUP:
        _store_slot(slot_rows, k, 0, nslot, hs, NG)
        hs, _ = scan_states(0, dstate, hs, As, dt, dtu, y, col_mask, row_ok, bc_offs_B, bc_offs_B,
                            is_first, is_last, B_src, stride_B_n, B_src, stride_B_n, NG, False,
                            MASK_T, B_VARIABLE, B_VARIABLE, True)
    else:
        for g in range(n_groups):
            n0 = g * NG
            As_g = load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, n0,
                           dstate, row_ok, NG)
            hs_g, _ = scan_states(n0, dstate, _slot_states(slot_rows, k, n0, nslot, NG), As_g, dt,
                                  dtu, y, col_mask, row_ok, bc_offs_B, bc_offs_B, is_first,
                                  is_last, B_src, stride_B_n, B_src, stride_B_n, NG, True, MASK_T,
                                  B_VARIABLE, B_VARIABLE, True)
            _store_slot(slot_rows, k + 1, n0, nslot, hs_g, NG)
        tl.debug_barrier()
    return hs


@triton.jit
def _bc_tiles(n0, dstate, B_src, stride_B_n, bc_offs_B, C_src, stride_C_n, bc_offs_C, row_ok,
              col_mask, ACC: tl.constexpr, NG: tl.constexpr, MASK_T: tl.constexpr,
              B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr):
    """B and C of states n0 .. n0+NG-1 over a tile (zero for a padding state n ≥ N)."""
    Bs = ()
    Cs = ()
    for i in tl.static_range(NG):
        state_ok = n0 + i < dstate
        Bs = Bs + (load_bc(B_src, n0 + i, stride_B_n, bc_offs_B, row_ok, state_ok, col_mask, ACC,
                           MASK_T, B_VARIABLE),)
        Cs = Cs + (load_bc(C_src, n0 + i, stride_C_n, bc_offs_C, row_ok, state_ok, col_mask, ACC,
                           MASK_T, C_VARIABLE),)
    return Bs, Cs


@triton.jit
def _group_inputs(n0, k, dstate, slot_rows, gslot_rows, acc_rows, nslot, row_ok, A_rows,
                  stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, B_src, stride_B_n,
                  bc_offs_B, C_src, stride_C_n, bc_offs_C, col_mask, ACC: tl.constexpr,
                  NG: tl.constexpr, MASK_T: tl.constexpr, B_VARIABLE: tl.constexpr,
                  C_VARIABLE: tl.constexpr):
    """What the second pass reads for states n0 .. n0+NG-1 of tile k when the states go in
    several groups: the kept states entering the tile, the gradients entering it from the
    right, A, B, C, and the dA sums so far."""
    Bs, Cs = _bc_tiles(n0, dstate, B_src, stride_B_n, bc_offs_B, C_src, stride_C_n, bc_offs_C,
                       row_ok, col_mask, ACC, NG, MASK_T, B_VARIABLE, C_VARIABLE)
    return (_row_states(slot_rows, k, n0, nslot, row_ok, NG),
            _row_states(gslot_rows, 0, n0, nslot, row_ok, NG),
            load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, n0, dstate,
                    row_ok, NG),
            _slot_states(acc_rows, 0, n0, nslot, NG), Bs, Cs)


@triton.jit
def _bc_sum_at(lab, n0, dB_base, dC_base, stride_dBC_n, j0, T: tl.constexpr,
               B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr):
    """Where the sum labelled `lab` goes (label n·NVAR·T + v·T + column for state n0 + n, v = 0
    for the first variable one of (dB, dC), 1 for dC when both are), and its state and column."""
    NVAR: tl.constexpr = 2 if B_VARIABLE and C_VARIABLE else 1
    col = lab % T
    n = n0 + lab // (T * NVAR)
    if NVAR == 2:
        base = tl.where((lab // T) % 2 == 1, dC_base, dB_base)
    else:
        base = dB_base if B_VARIABLE else dC_base
    at = base + n * stride_dBC_n + j0 + col
    return at, n, col


@triton.jit
def _store_bc_sums(tiles, n0, dstate, j0, j_hi, dB_base, dC_base, stride_dBC_n,
                   B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr, WARP_ROWS: tl.constexpr):
    """Stores the sums over the program's channels of a tile's per-channel terms of dB and dC
    for the group's states n0, n0 + 1, ..: `tiles` holds, state by state, the variable one of
    (dB, dC) as a [BLOCK_D, BLOCK_T] tile, or both paired by warp_sums's first lane bit. By
    warp_sums: one row bit of the lanes at a time, every lane ends with its own sums, then one
    exchange between warps (WARP_ROWS rows each)."""
    NVAR: tl.constexpr = 2 if B_VARIABLE and C_VARIABLE else 1
    T: tl.constexpr = tiles[0].shape[1]
    shares = warp_sums(tiles, NVAR - 1, WARP_ROWS=WARP_ROWS)
    labs, dup = lane_labels(len(tiles) * NVAR, T, WARP_ROWS, WARP_ROWS)
    for e in tl.static_range(len(shares)):
        total = warps_total(shares[e], tiles[0].shape[0], WARP_ROWS)
        lab = labs[e]
        at, n, col = _bc_sum_at(lab, n0, dB_base, dC_base, stride_dBC_n, j0, T, B_VARIABLE,
                                C_VARIABLE)
        tl.store(at, total, mask=(lab >= 0) & (dup == 0) & (n < dstate) & (j0 + col < j_hi))


@triton.jit
def _keep_warp_bc_sums(tiles, n0, wsum_at, n_labels, NVAR: tl.constexpr,
                       WARP_ROWS: tl.constexpr):
    """_store_bc_sums up to the exchange between warps: each warp's sums over its WARP_ROWS
    channels go to the program's scratch at wsum_at, a row of n_labels per block of WARP_ROWS
    channels, at their label plus n0·NVAR·T (_bc_sum_at's labels for the whole tile);
    _store_kept_bc_sums finishes them."""
    ROWS: tl.constexpr = tiles[0].shape[0]
    T: tl.constexpr = tiles[0].shape[1]
    shares = warp_sums(tiles, NVAR - 1, WARP_ROWS=WARP_ROWS)
    labs, dup = lane_labels(len(tiles) * NVAR, T, ROWS, WARP_ROWS)
    warp = (tl.arange(0, ROWS) // WARP_ROWS)[:, None]
    for e in tl.static_range(len(shares)):
        lab = labs[e]
        tl.store(wsum_at + warp * n_labels + n0 * NVAR * T + lab, shares[e],
                 mask=(lab >= 0) & (dup == 0))


@triton.jit
def _store_kept_bc_sums(wsum_at, n_labels, dstate, j0, j_hi, dB_base, dC_base, stride_dBC_n,
                        T: tl.constexpr, BLOCK_D: tl.constexpr, B_VARIABLE: tl.constexpr,
                        C_VARIABLE: tl.constexpr, WARP_ROWS: tl.constexpr):
    """The sums over the program's channels of a tile's dB and dC terms, after a barrier: the
    BLOCK_D // WARP_ROWS blocks' sums that _keep_warp_bc_sums kept, added in a fixed order."""
    for l0 in range(0, n_labels, BLOCK_D):
        lab = l0 + tl.arange(0, BLOCK_D)
        ok = lab < n_labels
        total = tl.load(wsum_at + lab, mask=ok, other=0.0)
        for w in tl.static_range(1, BLOCK_D // WARP_ROWS):
            total += tl.load(wsum_at + w * n_labels + lab, mask=ok, other=0.0)
        at, n, col = _bc_sum_at(lab, 0, dB_base, dC_base, stride_dBC_n, j0, T, B_VARIABLE,
                                C_VARIABLE)
        tl.store(at, total, mask=ok & (n < dstate) & (j0 + col < j_hi))


@triton.jit
def _bwd_states(
    hs, Gs, As, Bs, Cs, dt, u, dtu, dy, y, du, ddt, lead_row, col_mask, is_first, is_last,
    n0, dstate, j0, j_hi, dB_base, dC_base, dB_at, dC_at, stride_dBC_n, wsum_at, n_labels,
    NG: tl.constexpr, MULTI_GROUP: tl.constexpr, B_VARIABLE: tl.constexpr,
    C_VARIABLE: tl.constexpr, WARP_ROWS: tl.constexpr, SUMS_PER_TILE: tl.constexpr,
):
    """States n0 .. n0+NG-1 of one tile: rescans h from the states hs entering the tile, runs
    the reverse scan for g from the gradients Gs entering it from the right, adds their terms
    to y, du and ddt and stores the tile's sums over the block's channels of dB and dC when
    variable: with WARP_ROWS (a warp's rows; 0 when the block is not whole warps) all of the
    group's together (_store_bc_sums; with SUMS_PER_TILE
    only each warp's, at wsum_at, _keep_warp_bc_sums), else per state as row 0 of a
    [BLOCK_D, BLOCK_T] tile (which keeps the tile's register layout). Returns the gradients
    entering the tile's first position, the tile's sums over positions of ∂L/∂A_eff
    (and of dB, dC when fixed), y, du and ddt. A padding state (n ≥ N) has
    A = B = C = 0 and adds nothing."""
    new_Gs = ()
    dAs = ()
    dBs = ()
    dCs = ()
    bc_tiles = ()
    for i in tl.static_range(NG):
        n = n0 + i
        if MULTI_GROUP:
            state_ok = n < dstate
        else:
            state_ok = True
        B_n = Bs[i]
        C_n = Cs[i]
        a = tl.exp2(dt * As[i][:, None])
        b = dtu * B_n
        _, h = tl.associative_scan((a, tl.where(is_first, a * hs[i][:, None] + b, b)), axis=1,
                                   combine_fn=scan_combine)
        c = C_n * dy
        c = tl.where(is_last, c + Gs[i][:, None], c)
        g = _reverse_scan(a, c)
        new_Gs = new_Gs + (tl.sum(tl.where(is_first, a * g, -0.0), axis=1),)
        y += h * C_n
        gdt = g * dt
        du += gdt * B_n
        ah = h - b  # a_t·h_{t−1}
        ddt += g * (u * B_n + ah * (As[i] * LN2)[:, None])
        dAs = dAs + (tl.sum(g * ah * dt, axis=1),)
        if not B_VARIABLE:
            dBs = dBs + (tl.sum(gdt * u, axis=1),)
        elif not WARP_ROWS:
            tl.store(dB_at + n * stride_dBC_n, tl.sum(gdt * u, axis=0)[None, :],
                     mask=lead_row & col_mask & state_ok)
        if not C_VARIABLE:
            dCs = dCs + (tl.sum(dy * h, axis=1),)
        elif not WARP_ROWS:
            tl.store(dC_at + n * stride_dBC_n, tl.sum(dy * h, axis=0)[None, :],
                     mask=lead_row & col_mask & state_ok)
        if WARP_ROWS and B_VARIABLE and C_VARIABLE:
            # The state's two tiles paired at once (the first row bit): half the values live.
            bc_tiles = bc_tiles + warp_sums((gdt * u, dy * h), 0, 1, WARP_ROWS)
        elif WARP_ROWS and B_VARIABLE:
            bc_tiles = bc_tiles + (gdt * u,)
        elif WARP_ROWS and C_VARIABLE:
            bc_tiles = bc_tiles + (dy * h,)
    if WARP_ROWS and SUMS_PER_TILE and (B_VARIABLE or C_VARIABLE):
        _keep_warp_bc_sums(bc_tiles, n0, wsum_at, n_labels, 2 if B_VARIABLE and C_VARIABLE else 1,
                           WARP_ROWS)
    elif WARP_ROWS and (B_VARIABLE or C_VARIABLE):
        _store_bc_sums(bc_tiles, n0, dstate, j0, j_hi, dB_base, dC_base, stride_dBC_n,
                       B_VARIABLE, C_VARIABLE, WARP_ROWS)
    return new_Gs, dAs, dBs, dCs, y, du, ddt


@triton.jit
def _bwd_tile(
    k, j0, j_hi, seqlen, Gs, dAs, dBs, dCs, As, rows, row_ok, cols, u_rows, delta_rows, z_rows,
    dout_rows, du_rows, ddelta_rows, dz_rows, keep_row, stride_u_l, stride_delta_l, stride_z_l,
    stride_dout_l, stride_du_l, stride_ddelta_l, stride_dz_l, stride_keep_k,
    A_rows, stride_A_n, a_scale_rows, stride_as_n, a_mult,
    B_src, stride_B_n, stride_B_l, C_src, stride_C_n, stride_C_l,
    delta_bias, delta_scale, delta_threshold, D, flags, slot_rows, gslot_rows, acc_rows,
    wsum_base, dB_base, dC_base, stride_dBC_n, dstate, nslot, n_groups,
    BLOCK_T: tl.constexpr, NG: tl.constexpr, MULTI_GROUP: tl.constexpr, MASK_T: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_KEEP_IDX: tl.constexpr, B_VARIABLE: tl.constexpr,
    C_VARIABLE: tl.constexpr, WARP_ROWS: tl.constexpr, SUMS_PER_TILE: tl.constexpr,
):
    """Second pass over tile k of a segment: stores du, ddelta, dz. One group: carries Gs and the
    accumulators dAs (dBs, dCs when fixed) in registers and returns them; several: through the
    program's scratch. Also returns the tile's sums per channel of dy·u (dD), ∂L/∂(delta + bias)
    (ddelta_bias) and ∂L/∂Δ̂·(Δ̂ before scaling) (ddelta_scale)."""
    ACC = D.dtype
    j, pos, col_ok, col_mask, _ = tile_columns(j0, j_hi, cols, rows, keep_row, stride_keep_k,
                                                seqlen, MASK_T, HAS_KEEP_IDX)
    # Rows past `dim` re-read the last channel; with u = 0 and a zero start state there they
    # add nothing to the sums over channels.
    u = tl.load(u_rows + pos[None, :] * stride_u_l, mask=col_mask, other=0.0).to(ACC)
    u = tl.where(row_ok[:, None], u, 0.0)
    delta = tl.load(delta_rows + pos[None, :] * stride_delta_l, mask=col_mask, other=0.0).to(ACC)
    dt, _, _ = delta_hat(delta, delta_bias, delta_scale, delta_threshold, flags)
    if MASK_T:
        dt = tl.where(col_mask, dt, 0.0)
    dy, _, _, _ = _load_dy(dout_rows, z_rows, j, pos, stride_dout_l, stride_z_l, col_mask, ACC,
                           HAS_Z)
    tile_dD = tl.sum(dy * u, axis=1)
    dtu = dt * u
    y = u * D[:, None]
    du = dy * D[:, None]
    ddt = tl.zeros(dt.shape, ACC)
    zero_rows = (rows * 0)[:, None]
    # B and C (and the sums of their gradients) by visited index, like the forward kernel's.
    bc_offs_B = zero_rows + j[None, :] * stride_B_l
    bc_offs_C = zero_rows + j[None, :] * stride_C_l
    lead_row = (tl.arange(0, rows.shape[0]) == 0)[:, None]
    dB_at = dB_base + zero_rows + j[None, :] if B_VARIABLE else dB_base
    dC_at = dC_base + zero_rows + j[None, :] if C_VARIABLE else dC_base
    is_first = (cols == 0)[None, :]
    is_last = (cols == BLOCK_T - 1)[None, :]
    # The warps' sums of variable dB and dC (SUMS_PER_TILE), in two buffers by the tile's
    # parity: a thread may store the next tile's while another still reads this one's.
    NVAR: tl.constexpr = B_VARIABLE + C_VARIABLE
    n_labels = nslot * NVAR * BLOCK_T
    wsum_at = wsum_base
    if WARP_ROWS:
        wsum_at += (k % 2) * (rows.shape[0] // WARP_ROWS) * n_labels
    if not MULTI_GROUP:
        hs = _row_states(slot_rows, k, 0, nslot, row_ok, NG)
        Bs, Cs = _bc_tiles(0, dstate, B_src, stride_B_n, bc_offs_B, C_src, stride_C_n, bc_offs_C,
                           row_ok, col_mask, ACC, NG, MASK_T, B_VARIABLE, C_VARIABLE)
        Gs, tile_dA, tile_dB, tile_dC, y, du, ddt = _bwd_states(
            hs, Gs, As, Bs, Cs, dt, u, dtu, dy, y, du, ddt, lead_row, col_mask, is_first,
            is_last, 0, dstate, j0, j_hi, dB_base, dC_base, dB_at, dC_at, stride_dBC_n,
            wsum_at, n_labels, NG, False, B_VARIABLE, C_VARIABLE, WARP_ROWS, SUMS_PER_TILE)
        dAs = _added(dAs, tile_dA, NG)
        if not B_VARIABLE:
            dBs = _added(dBs, tile_dB, NG)
        if not C_VARIABLE:
            dCs = _added(dCs, tile_dC, NG)
    else:
        for g in range(n_groups):
            n0 = g * NG
            hs_g, Gs_g, As_g, dA_g, Bs_g, Cs_g = _group_inputs(
                n0, k, dstate, slot_rows, gslot_rows, acc_rows, nslot, row_ok, A_rows, stride_A_n,
                a_scale_rows, stride_as_n, flags, a_mult, B_src, stride_B_n, bc_offs_B, C_src,
                stride_C_n, bc_offs_C, col_mask, ACC, NG, MASK_T, B_VARIABLE, C_VARIABLE)
            Gs_g, tile_dA, tile_dB, tile_dC, y, du, ddt = _bwd_states(
                hs_g, Gs_g, As_g, Bs_g, Cs_g, dt, u, dtu, dy, y, du, ddt, lead_row, col_mask,
                is_first, is_last, n0, dstate, j0, j_hi, dB_base, dC_base, dB_at, dC_at,
                stride_dBC_n, wsum_at, n_labels, NG, True, B_VARIABLE, C_VARIABLE, WARP_ROWS,
                SUMS_PER_TILE)
            _store_slot(gslot_rows, 0, n0, nslot, Gs_g, NG)
            _store_slot(acc_rows, 0, n0, nslot, _added(dA_g, tile_dA, NG), NG)
            if not B_VARIABLE:
                _store_slot(acc_rows, 1, n0, nslot,
                            _added(_slot_states(acc_rows, 1, n0, nslot, NG), tile_dB, NG), NG)
            if not C_VARIABLE:
                _store_slot(acc_rows, 2, n0, nslot,
                            _added(_slot_states(acc_rows, 2, n0, nslot, NG), tile_dC, NG), NG)
    KEPT_SUMS: tl.constexpr = WARP_ROWS > 0 and SUMS_PER_TILE and NVAR > 0
    if MULTI_GROUP or KEPT_SUMS:
        tl.debug_barrier()
    if KEPT_SUMS:
        _store_kept_bc_sums(wsum_at, n_labels, dstate, j0, j_hi, dB_base, dC_base,
                            stride_dBC_n, BLOCK_T, rows.shape[0], B_VARIABLE, C_VARIABLE,
                            WARP_ROWS)

    store_mask = row_ok[:, None] & col_ok[None, :]
    # What only the stores need is loaded again here rather than kept live across the states.
    if HAS_Z:
        _, dout, z, sig = _load_dy(dout_rows, z_rows, j, pos, stride_dout_l, stride_z_l,
                                   col_mask, ACC, HAS_Z)
        dz = dout * y * sig * (1.0 + z * (1.0 - sig))
        tl.store(dz_rows + pos[None, :] * stride_dz_l, dz.to(dz_rows.dtype.element_ty),
                 mask=store_mask)
    delta = tl.load(delta_rows + pos[None, :] * stride_delta_l, mask=col_mask, other=0.0).to(ACC)
    _, pre, sp = delta_hat(delta, delta_bias, delta_scale, delta_threshold, flags)
    cut = sp * delta_scale[:, None] <= delta_threshold[:, None]  # no gradient to delta here
    if MASK_T:
        cut = cut | (col_mask == 0)
    tl.store(du_rows + pos[None, :] * stride_du_l, du.to(du_rows.dtype.element_ty),
             mask=store_mask)
    ddt = tl.where(cut, 0.0, ddt)
    dpre = ddt * delta_scale[:, None]
    if (flags & FLAG_SOFTPLUS) != 0:
        dpre *= tl.where(pre > 20.0, 1.0, tl.sigmoid(pre))
    tl.store(ddelta_rows + pos[None, :] * stride_ddelta_l, dpre.to(ddelta_rows.dtype.element_ty),
             mask=store_mask)
    return Gs, dAs, dBs, dCs, tile_dD, tl.sum(dpre, axis=1), tl.sum(ddt * sp, axis=1)


@triton.jit(do_not_specialize=["flags", "n_dblocks", "n_ranges", "chunk_ranges", "range_len",
                               "n_gtiles", "n_groups", "per_program", "off_gcarry",
                               "off_seg_decay", "off_range_agg", "off_range_hend",
                               "off_range_decay", "off_scratch", "off_sums", "sums_row", "off_dB",
                               "off_dC"])
def bwd_main_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, delta_scale_ptr,
    a_scale_ptr, delta_threshold_ptr, keep_idx_ptr, dout_ptr, chunk_states_ptr, work_ptr, du_ptr,
    ddelta_ptr, dz_ptr, dh0_ptr, delta_mult, a_mult,
    dim, dstate, seqlen, nvisit, dim_per_group_B, dim_per_group_C, n_dblocks, n_ranges,
    chunk_ranges, range_len, n_gtiles, n_groups, per_program, flags, off_gcarry, off_seg_decay,
    off_range_agg, off_range_hend, off_range_decay, off_scratch, off_sums, sums_row, off_dB,
    off_dC,
    stride_u_b, stride_u_d, stride_u_l,
    stride_delta_b, stride_delta_d, stride_delta_l,
    stride_z_b, stride_z_d, stride_z_l,
    stride_dout_b, stride_dout_d, stride_dout_l,
    stride_du_b, stride_du_d, stride_du_l,
    stride_ddelta_b, stride_ddelta_d, stride_ddelta_l,
    stride_dz_b, stride_dz_d, stride_dz_l,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n, stride_B_l,
    stride_C_b, stride_C_g, stride_C_n, stride_C_l,
    stride_as_d, stride_as_n,
    stride_keep_b, stride_keep_k,
    SEG: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, NG: tl.constexpr,
    MULTI_GROUP: tl.constexpr, HAS_Z: tl.constexpr, HAS_KEEP_IDX: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr, WARP_ROWS: tl.constexpr,
    SUMS_PER_TILE: tl.constexpr,
):
    """Grid (batch · n_dblocks, n_ranges). One program owns BLOCK_D channels (one row per thread
    with BLOCK_T positions in its registers, as in the forward kernel, or per two threads with
    half of them each: WARP_ROWS channels per warp) and one range of visited
    positions, which it walks in segments of SEG (the tiles of gcarry). It starts from the
    forward's state at its chunk's start (chunk_states (batch, dim, n_chunks, N), chunk_ranges
    ranges per chunk) and the gradients entering from the right, both folded from kernel 1's
    range aggregates. Per segment, a first pass from the segment's start state keeps the state
    entering every tile in the program's scratch (per_program floats: SEG / BLOCK_T + 1 slots of
    n_groups · NG states, then, with MULTI_GROUP, the gradient carries, the accumulators and the
    range's carries, then with WARP_ROWS and SUMS_PER_TILE each warp's sums of variable dB and dC
    for two tiles, exchanged between the warps once per tile rather than once per group); a second
    pass walks the tiles backwards from the gradient entering the segment (kernel 1's, with the
    range's carries folded in), rescanning each tile from its kept state. Writes du, ddelta, dz at
    the visited positions; with an initial state (range 0's programs) dh0; into the workspace
    work_ptr (off_* its regions) a row of sums_row partial sums over its positions (at off_sums,
    rows batch · n_ranges): dA (dim, N), dB and dC (dim, N) when fixed, then the sums for dD,
    ddelta_bias and ddelta_scale (dim each); and dB, dC when variable as the sums over each channel
    block (batch, n_dblocks, N, K). B and C are read by visited index (with keep_idx, the kept
    positions' copies). Every element is written once: no zero fill, no atomics."""
    pid = tl.program_id(0)
    r = tl.program_id(1)
    b, d0, rows, row_ok, rows64, in_rows64 = row_setup(pid, n_dblocks, dim, BLOCK_D)
    ACC = A_ptr.dtype.element_ty
    cols = tl.arange(0, BLOCK_T)
    u_rows = (u_ptr + b * stride_u_b + in_rows64 * stride_u_d)[:, None]
    delta_rows = (delta_ptr + b * stride_delta_b + in_rows64 * stride_delta_d)[:, None]
    z_rows = (z_ptr + b * stride_z_b + in_rows64 * stride_z_d)[:, None]
    dout_rows = (dout_ptr + b * stride_dout_b + in_rows64 * stride_dout_d)[:, None]
    du_rows = (du_ptr + b * stride_du_b + rows64 * stride_du_d)[:, None]
    ddelta_rows = (ddelta_ptr + b * stride_ddelta_b + rows64 * stride_ddelta_d)[:, None]
    dz_rows = (dz_ptr + b * stride_dz_b + rows64 * stride_dz_d)[:, None]
    keep_row = keep_idx_ptr + b * stride_keep_b
    A_rows = A_ptr + rows64 * stride_A_d
    a_scale_rows = a_scale_ptr + rows64 * stride_as_d
    B_src = bc_source(B_ptr, b, d0, rows64, dim_per_group_B, stride_B_b, stride_B_g, B_VARIABLE)
    C_src = bc_source(C_ptr, b, d0, rows64, dim_per_group_C, stride_C_b, stride_C_g, C_VARIABLE)
    delta_bias, delta_scale, delta_threshold = channel_params(
        rows, row_ok, delta_bias_ptr, delta_scale_ptr, delta_threshold_ptr, flags, delta_mult)
    D = load_D(D_ptr, rows, row_ok, flags)
    g_rows = work_ptr + off_gcarry + (b * dim + rows64) * n_gtiles * dstate
    range_agg_ptr = work_ptr + off_range_agg
    range_hend_ptr = work_ptr + off_range_hend
    range_decay_ptr = work_ptr + off_range_decay
    # This program's row of the partial sums over positions: dA (dim, N), dB and dC (dim, N)
    # when fixed (at off_dB, off_dC in the row), dD, ddelta_bias, ddelta_scale (dim each).
    sums_at = work_ptr + off_sums + (b * n_ranges + r).to(tl.int64) * sums_row
    NSUMS: tl.constexpr = 3 - B_VARIABLE - C_VARIABLE  # (dim, N) sums before dD's
    dA_rows = sums_at + rows64 * dstate
    stride_dBC_n = nvisit
    dBC_base = (b * n_dblocks + pid % n_dblocks) * dstate * nvisit
    dB_base = (work_ptr + off_dB + dBC_base if B_VARIABLE
               else sums_at + off_dB + rows64 * dstate)
    dC_base = (work_ptr + off_dC + dBC_base if C_VARIABLE
               else sums_at + off_dC + rows64 * dstate)
    nslot = n_groups * NG
    scratch = work_ptr + off_scratch + (pid.to(tl.int64) * n_ranges + r) * per_program
    slot_rows = _paired_slots(scratch, BLOCK_D, NG, WARP_ROWS)
    gslot_rows = slot_rows + (SEG // BLOCK_T + 1) * nslot * BLOCK_D
    acc_rows = gslot_rows + nslot * BLOCK_D
    xslot_rows = acc_rows + 3 * nslot * BLOCK_D
    wsum_base = scratch + (SEG // BLOCK_T + 1 + 5 * MULTI_GROUP) * nslot * BLOCK_D
    decay_rows = work_ptr + off_seg_decay + b * n_gtiles * dim + rows64
    dh0_here = (r == 0) & ((flags & FLAG_INITIAL_STATE) != 0)

    if not MULTI_GROUP:
        As = load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, 0, dstate,
                     row_ok, NG)
        hs = _range_start_states(b, r, n_ranges, chunk_ranges, 0, dstate, dim, As, rows64, row_ok,
                                 chunk_states_ptr, range_hend_ptr, range_decay_ptr, NG)
        Xs = _range_carries(b, r, n_ranges, 0, dstate, dim, As, rows64, row_ok, range_agg_ptr,
                            range_decay_ptr, NG)
        if dh0_here:
            _store_dh0(b, n_ranges, 0, dstate, dim, Xs, As, rows64, row_ok, range_agg_ptr,
                       range_decay_ptr, dh0_ptr, NG)
        zeros = ()
        for i in tl.static_range(NG):
            zeros = zeros + (tl.zeros([BLOCK_D], ACC),)
        dAs = zeros
        dBs = () if B_VARIABLE else zeros
        dCs = () if C_VARIABLE else zeros
    else:
        hs = ()
        As = ()
        dAs = ()
        dBs = ()
        dCs = ()
        for g in range(n_groups):
            n0 = g * NG
            As_g = load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, n0,
                           dstate, row_ok, NG)
            _store_slot(slot_rows, 0, n0, nslot,
                        _range_start_states(b, r, n_ranges, chunk_ranges, n0, dstate, dim, As_g,
                                            rows64, row_ok, chunk_states_ptr, range_hend_ptr,
                                            range_decay_ptr, NG), NG)
            Xs_g = _range_carries(b, r, n_ranges, n0, dstate, dim, As_g, rows64, row_ok,
                                  range_agg_ptr, range_decay_ptr, NG)
            _store_slot(xslot_rows, 0, n0, nslot, Xs_g, NG)
            if dh0_here:
                _store_dh0(b, n_ranges, n0, dstate, dim, Xs_g, As_g, rows64, row_ok,
                           range_agg_ptr, range_decay_ptr, dh0_ptr, NG)
            zeros = ()
            for i in tl.static_range(NG):
                zeros = zeros + (tl.zeros([BLOCK_D], ACC),)
            for q in tl.static_range(3):
                _store_slot(acc_rows, q, n0, nslot, zeros, NG)
        tl.debug_barrier()

    sum_dD = tl.zeros([BLOCK_D], ACC)
    sum_dbias = tl.zeros([BLOCK_D], ACC)
    sum_dscale = tl.zeros([BLOCK_D], ACC)
    # In whole segments, so that the compiler sees every tile start aligned for vector loads.
    segs_per_range = range_len // SEG
    j_lo = r * segs_per_range * SEG
    j_hi = tl.minimum(j_lo + range_len, nvisit)
    for s in range(tl.cdiv(j_hi - j_lo, SEG)):
        # The scratch's slots are rewritten below: every thread is done with the last
        # segment's (rows held by several threads read what another one wrote).
        tl.debug_barrier()
        s0 = j_lo + s * SEG
        s_hi = tl.minimum(s0 + SEG, j_hi)
        n_full = (s_hi - s0) // BLOCK_T
        partial = s0 + n_full * BLOCK_T < s_hi
        n_tiles = tl.cdiv(s_hi - s0, BLOCK_T)
        G_rows = g_rows + (s0 // SEG) * dstate
        decay = tl.load(decay_rows + (s0 // SEG) * dim, mask=row_ok, other=0.0)
        if MULTI_GROUP:
            # The gradients entering the segment, read by the second pass's first tile (after
            # the first pass's barriers).
            for g in range(n_groups):
                n0 = g * NG
                As_g = load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, n0,
                               dstate, row_ok, NG)
                _store_slot(gslot_rows, 0, n0, nslot,
                            _segment_carries(G_rows, decay,
                                             _slot_states(xslot_rows, 0, n0, nslot, NG), As_g,
                                             n0, dstate, row_ok, NG), NG)
        for k in range(n_full):
            hs = _state_tile(
                k, s0 + k * BLOCK_T, s_hi, seqlen, hs, As, rows, row_ok, cols, u_rows,
                delta_rows, keep_row, stride_u_l, stride_delta_l, stride_keep_k, A_rows,
                stride_A_n, a_scale_rows, stride_as_n, a_mult, B_src, stride_B_n, stride_B_l,
                delta_bias, delta_scale, delta_threshold, D, flags, slot_rows, dstate, nslot,
                n_groups, BLOCK_T, NG, MULTI_GROUP, False, HAS_KEEP_IDX, B_VARIABLE)
        if partial:
            hs = _state_tile(
                n_full, s0 + n_full * BLOCK_T, s_hi, seqlen, hs, As, rows, row_ok, cols, u_rows,
                delta_rows, keep_row, stride_u_l, stride_delta_l, stride_keep_k, A_rows,
                stride_A_n, a_scale_rows, stride_as_n, a_mult, B_src, stride_B_n, stride_B_l,
                delta_bias, delta_scale, delta_threshold, D, flags, slot_rows, dstate, nslot,
                n_groups, BLOCK_T, NG, MULTI_GROUP, True, HAS_KEEP_IDX, B_VARIABLE)

        if MULTI_GROUP:
            Gs = ()
        else:
            Gs = _segment_carries(G_rows, decay, Xs, As, 0, dstate, row_ok, NG)
        if partial:
            Gs, dAs, dBs, dCs, t_dD, t_dbias, t_dscale = _bwd_tile(
                n_full, s0 + n_full * BLOCK_T, s_hi, seqlen, Gs, dAs, dBs, dCs, As, rows, row_ok,
                cols, u_rows, delta_rows, z_rows, dout_rows, du_rows, ddelta_rows, dz_rows,
                keep_row, stride_u_l, stride_delta_l, stride_z_l, stride_dout_l, stride_du_l,
                stride_ddelta_l, stride_dz_l, stride_keep_k, A_rows, stride_A_n, a_scale_rows,
                stride_as_n, a_mult, B_src, stride_B_n, stride_B_l, C_src, stride_C_n,
                stride_C_l, delta_bias, delta_scale, delta_threshold, D, flags, slot_rows,
                gslot_rows, acc_rows, wsum_base, dB_base, dC_base, stride_dBC_n, dstate,
                nslot,
                n_groups, BLOCK_T, NG, MULTI_GROUP, True, HAS_Z, HAS_KEEP_IDX, B_VARIABLE,
                C_VARIABLE, WARP_ROWS, SUMS_PER_TILE)
            sum_dD += t_dD
            sum_dbias += t_dbias
            sum_dscale += t_dscale
        for k_rev in range(n_full):
            k = n_full - 1 - k_rev
            Gs, dAs, dBs, dCs, t_dD, t_dbias, t_dscale = _bwd_tile(
                k, s0 + k * BLOCK_T, s_hi, seqlen, Gs, dAs, dBs, dCs, As, rows, row_ok, cols,
                u_rows, delta_rows, z_rows, dout_rows, du_rows, ddelta_rows, dz_rows, keep_row,
                stride_u_l, stride_delta_l, stride_z_l, stride_dout_l, stride_du_l,
                stride_ddelta_l, stride_dz_l, stride_keep_k, A_rows, stride_A_n, a_scale_rows,
                stride_as_n, a_mult, B_src, stride_B_n, stride_B_l, C_src, stride_C_n,
                stride_C_l, delta_bias, delta_scale, delta_threshold, D, flags, slot_rows,
                gslot_rows, acc_rows, wsum_base, dB_base, dC_base, stride_dBC_n, dstate,
                nslot,
                n_groups, BLOCK_T, NG, MULTI_GROUP, False, HAS_Z,
                HAS_KEEP_IDX, B_VARIABLE, C_VARIABLE, WARP_ROWS, SUMS_PER_TILE)
            sum_dD += t_dD
            sum_dbias += t_dbias
            sum_dscale += t_dscale
        if MULTI_GROUP:
            # The next segment starts from the state after this one's last tile.
            for g in range(n_groups):
                _store_slot(slot_rows, 0, g * NG, nslot,
                            _slot_states(slot_rows, n_tiles, g * NG, nslot, NG), NG)
            tl.debug_barrier()

    if not MULTI_GROUP:
        store_states(dA_rows, 0, dstate, dAs, row_ok, NG)
        if not B_VARIABLE:
            store_states(dB_base, 0, dstate, dBs, row_ok, NG)
        if not C_VARIABLE:
            store_states(dC_base, 0, dstate, dCs, row_ok, NG)
    else:
        for g in range(n_groups):
            n0 = g * NG
            store_states(dA_rows, n0, dstate, _slot_states(acc_rows, 0, n0, nslot, NG), row_ok,
                         NG)
            if not B_VARIABLE:
                store_states(dB_base, n0, dstate, _slot_states(acc_rows, 1, n0, nslot, NG),
                             row_ok, NG)
            if not C_VARIABLE:
                store_states(dC_base, n0, dstate, _slot_states(acc_rows, 2, n0, nslot, NG),
                             row_ok, NG)
    chan_rows = sums_at + NSUMS * dim * dstate + rows64
    tl.store(chan_rows, sum_dD, mask=row_ok)
    tl.store(chan_rows + dim, sum_dbias, mask=row_ok)
    tl.store(chan_rows + 2 * dim, sum_dscale, mask=row_ok)


def _range_length(block_t, chunk_size, nvisit, programs_per_range, device):
    """Positions per program of the backward kernels: the largest power-of-two multiple of
    block_t dividing chunk_size that still gives about two programs per SM to the kernel with
    the fewest programs per range (programs_per_range)."""
    length = chunk_size
    target = 2 * multiprocessor_count(device)
    while length > block_t and programs_per_range * triton.cdiv(nvisit, length) < target:
        length //= 2
    return length


def _fewer_per_sm(programs, device, fewer, wave_ratio):
    """Whether a grid of `programs` finishes sooner with `fewer` programs per SM than with one
    more, when a wave of fewer + 1 takes wave_ratio times as long as a wave of `fewer`."""
    sms = multiprocessor_count(device)
    return (triton.cdiv(programs, fewer * sms)
            < triton.cdiv(programs, (fewer + 1) * sms) * wave_ratio)


def main_config(programs, size, device):
    """(states per unrolled group, maxnreg, sums_per_tile) of the main kernel for a grid of
    `programs` and inputs of `size` bytes, tiles of 8 positions. With several groups the
    gradient carries and accumulators go through the program's scratch, and the warps' sums of
    variable dB and dC are exchanged once per tile. 16-bit inputs (a row per lane), H200
    (docs/kernel-log.md, "v2, second step" to "fourth step"): groups of two states with 168
    registers (three programs per SM), or 200 (two per SM, no spills) when the grid's waves of
    two programs per SM, each worth 2/3 of a wave of three, come to less than its waves of
    three: at 384 programs (one wave of three) 168 registers took 3.5 ms at bf16 1x1536x32768
    against 4.8 with 200; at 512 (16x2048x2048) 5.8 against 5.0. float32 (a row over two
    lanes), H100 ("v2, eighth step"): groups of two with 168 registers (three per SM), or 128
    (four per SM) when its waves come to less: at 384 programs 4.55 ms against 5.48 with 128,
    at 512 7.56 against 6.65. The interpreter: one group of up to MAX_GROUP states."""
    if INTERPRETED:
        return MAX_GROUP, None, size in (2, 4)
    if size == 4:
        return 2, 168 if _fewer_per_sm(programs, device, 3, 1.46) else 128, True
    return (2 if size == 2 else 4, 200 if _fewer_per_sm(programs, device, 2, 1.5) else 168,
            size == 2)


def aggregates_maxnreg(programs, device):
    """maxnreg of the range-aggregate kernel for a grid of `programs`: uncapped (255 registers,
    two programs per SM) or 168 (three per SM, a few spills), by the waves each takes. H200,
    bf16, ranges of 1024 positions (docs/kernel-log.md, "v2, fourth step"): a wave of three
    took 0.87 ms, of two 0.68 (ratio 1.28); 384 programs (one wave of three) 0.87 against 1.36,
    512 (two waves either way) 1.55 against 1.36. A cap of 128 spilled more and was slower
    everywhere."""
    if INTERPRETED or _fewer_per_sm(programs, device, 2, 1.28):
        return None
    return 168


@triton.jit
def _sum_parts(q, src_ptr, dst_ptr, parts, width, stride_part, n_blocks, BLOCK: tl.constexpr):
    """Program q of one reduction: dst[o, i] = Σ_p src[o, p, i] over one block of BLOCK
    columns i < width, p = 0, 1, .., parts − 1 in order (src rows stride_part apart, dst rows
    width apart; o = q // n_blocks)."""
    o = (q // n_blocks).to(tl.int64)
    cols = (q % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    src = src_ptr + o * parts * stride_part + cols
    acc = tl.zeros([BLOCK], src_ptr.dtype.element_ty)
    for p in range(parts):
        acc += tl.load(src + p * stride_part, mask=mask, other=0.0)
    tl.store(dst_ptr + o * width + cols, acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["off_sums", "rows", "sums_width", "sums_row", "off_dB", "off_dC",
                               "parts_B", "parts_C", "bc_width", "bc_blocks", "start_B",
                               "start_C"])
def bwd_sums_kernel(
    work_ptr, sums_ptr, dB_ptr, dC_ptr,
    off_sums, rows, sums_width, sums_row, off_dB, off_dC, parts_B, parts_C, bc_width,
    bc_blocks, start_B, start_C, BLOCK: tl.constexpr,
):
    """The main kernel's partial sums, summed in a fixed order: programs below start_B sum its
    rows (rows of sums_row at off_sums in the workspace work_ptr) into sums (sums_width: dA,
    fixed dB and dC, dD, ddelta_bias, ddelta_scale); from start_B the variable dB's channel
    blocks (batch, G · parts_B, N, K at off_dB) into dB (batch, G, N, K) in dB's dtype, from
    start_C likewise dC."""
    q = tl.program_id(0)
    if q < start_B:
        _sum_parts(q, work_ptr + off_sums, sums_ptr, rows, sums_width, sums_row,
                   tl.cdiv(sums_width, BLOCK), BLOCK)
    elif q < start_C:
        _sum_parts(q - start_B, work_ptr + off_dB, dB_ptr, parts_B, bc_width, bc_width, bc_blocks,
                   BLOCK)
    else:
        _sum_parts(q - start_C, work_ptr + off_dC, dC_ptr, parts_C, bc_width, bc_width, bc_blocks,
                   BLOCK)


# Leading arguments of each backward kernel that change from call to call (tensors and the
# scale multipliers); the others are fixed by the inputs' signature.
AGGREGATES_DYNAMIC_ARGS = 16
MAIN_DYNAMIC_ARGS = 21
SUMS_DYNAMIC_ARGS = 4
# Columns per program of bwd_sums_kernel.
SUMS_BLOCK = 1024
# Warps per program of the range-aggregate kernel (a channel row per thread), and its channels
# per program in the interpreter.
AGGREGATE_WARPS = 4
AGGREGATE_BLOCK_D = 4 if INTERPRETED else 32 * AGGREGATE_WARPS
# BackwardPlans by the inputs' launch_signature, layout and tuning.
BACKWARD_PLANS = SignatureCache()


class BackwardPlan(NamedTuple):
    """What selective_scan_bwd decides from the inputs' signature: its three launches, the size
    of its workspace, and the outputs of the sums kernel."""
    aggregates: LaunchPlan
    main: LaunchPlan
    sums: LaunchPlan
    work_size: int
    sums_width: int
    # The sums kernel's per-channel output in consecutive parts: dA (dim · N), dB and dC
    # (dim · N) when fixed, then dD, ddelta_bias and ddelta_scale (dim each).
    sums_split: tuple
    dB_shape: tuple  # the sums kernel's dB: B's shape with K positions, or None when fixed
    dC_shape: tuple


def _regions(*sizes):
    """Offsets of consecutive regions of the given sizes and the total size. Each region starts
    at a multiple of 128 elements (512 bytes in float32, as a separate allocation would)."""
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // 128) * 128
    return offsets, total


def backward_plan(dout, dlast, u, delta, A, B, C, main_B, main_C, opts, layout, tuning):
    """The BackwardPlan of selective_scan_bwd for these inputs (main_B, main_C: B and C as the
    main kernel reads them, by visited index) and tuning (chunk_size, block_d, block_t,
    range_length, tile, num_warps, group, maxnreg, sums_per_tile)."""
    (chunk_size, block_d, block_t, range_length, tile, num_warps, group, maxnreg,
     sums_per_tile) = tuning
    batch, dim, L = u.shape
    dstate = A.shape[1]
    keep_idx, z, h0 = opts.keep_idx, opts.z, opts.initial_state
    nvisit = opts.visited or L
    chunk_size = chunk_size or CHUNK_SIZE
    per_cgroup = dim // math.lcm(layout.B_groups, layout.C_groups)
    block_t = block_t or BWD_BLOCK_T
    size = max(u.element_size(), delta.element_size())
    # The interpreter's cost grows with the tiles: one per segment there (tests force more). On
    # a GPU the range-aggregate kernel's tiles are 16 bytes of each row (one row per thread),
    # the main kernel's 8 positions, loaded 16 bytes per lane: a row of 16-bit inputs on one
    # lane, of float32 on two, whose blocks then hold half the channels.
    agg_tile = tile or (block_t if INTERPRETED else 16 // size)
    tile = tile or (block_t if INTERPRETED else 8 if size in (2, 4) else 16 // size)
    lanes = max(1, tile * size // 16)
    block_d = fit_block_d(block_d or (4 if INTERPRETED else 32 * num_warps // lanes), per_cgroup,
                          dim)
    agg_block_d = fit_block_d(AGGREGATE_BLOCK_D, per_cgroup, dim)
    if (chunk_size % block_t or block_t % tile
            or per_cgroup % block_d and per_cgroup != dim):
        raise ValueError(f"block_t = {block_t} must divide chunk_size = {chunk_size}, tile = "
                         f"{tile} must divide block_t, and block_d = {block_d} must divide the "
                         f"channels per group, {per_cgroup}")
    n_dblocks = triton.cdiv(dim, block_d)
    agg_dblocks = triton.cdiv(dim, agg_block_d)
    range_len = range_length or _range_length(block_t, chunk_size, nvisit,
                                              batch * min(n_dblocks, agg_dblocks), u.device)
    if chunk_size % range_len or range_len % block_t:
        raise ValueError(f"range_length = {range_len} must divide chunk_size = {chunk_size} and "
                         f"be a multiple of block_t = {block_t}")
    n_ranges = triton.cdiv(nvisit, range_len)
    auto_group, auto_maxnreg, auto_per_tile = main_config(batch * n_dblocks * n_ranges, size,
                                                          u.device)
    group = group or auto_group
    maxnreg = auto_maxnreg if maxnreg is None else maxnreg  # 0: no cap
    sums_per_tile = auto_per_tile if sums_per_tile is None else sums_per_tile
    n_gtiles = triton.cdiv(nvisit, block_t)
    n_groups = triton.cdiv(dstate, MAX_GROUP)
    agg_group = triton.cdiv(dstate, n_groups)
    # States per unrolled group of the main kernel.
    main_groups = triton.cdiv(dstate, group)
    group = triton.cdiv(dstate, main_groups)
    # The main kernel's scratch per program: the states entering each tile of a segment (and
    # after its last), then with several groups their gradient carries, 3 accumulators and the
    # range's carries; with sums_per_tile two tiles' sums of variable dB and dC per warp.
    nslot = main_groups * group
    rows_per_warp = warp_rows(block_d, tile, size, num_warps)
    kept_sums = rows_per_warp > 0 and sums_per_tile
    nvar = layout.B_variable + layout.C_variable
    per_program = ((block_t // tile + 1 + (5 if main_groups > 1 else 0)) * nslot * block_d
                   + (2 * block_d // rows_per_warp * nslot * nvar * tile if kept_sums else 0))
    _, delta_scale, _, a_scale = kernel_scales(opts.delta_scale, opts.a_scale, dim, dstate)
    flags = option_flags(opts.D, opts.delta_bias, opts.delta_softplus, delta_scale, a_scale,
                         opts.delta_threshold, h0, dlast)
    device = u.get_device()
    absent = A.new_empty(1)

    # The workspace: the range aggregates, the main kernel's scratch, a row of partial sums
    # per (batch row, range) (dA, fixed dB and dC, then dD, ddelta_bias, ddelta_scale), and the
    # variable dB and dC per channel block.
    rows = batch * n_ranges
    size = dim * dstate
    fixed_dB = None if layout.B_variable else size
    fixed_dC = None if layout.C_variable else size + (fixed_dB or 0)
    chan = size * (1 + (fixed_dB is not None) + (fixed_dC is not None))  # bwd_main_kernel's NSUMS
    sums_split = (*[size] * (chan // size), dim, dim, dim)
    sums_width = chan + 3 * dim
    sums_row = -(-sums_width // 16) * 16
    bc_size = batch * n_dblocks * dstate * nvisit
    (off_gcarry, off_seg_decay, off_range_agg, off_range_hend, off_range_decay, off_scratch,
     off_sums, off_var_B, off_var_C), work_size = _regions(
        batch * dim * n_gtiles * dstate, batch * n_gtiles * dim, rows * dim * dstate,
        rows * dim * dstate, rows * dim, batch * n_dblocks * n_ranges * per_program,
        rows * sums_row, bc_size if layout.B_variable else 0,
        bc_size if layout.C_variable else 0)
    # dB and dC: variable ones at their regions, fixed ones within a row of sums.
    off_dB = off_var_B if layout.B_variable else fixed_dB
    off_dC = off_var_C if layout.C_variable else fixed_dC
    aggregate_offsets = dict(off_gcarry=off_gcarry, off_seg_decay=off_seg_decay,
                             off_range_agg=off_range_agg, off_range_hend=off_range_hend,
                             off_range_decay=off_range_decay)
    common = dict(dim=dim, dstate=dstate, seqlen=L, nvisit=nvisit, flags=flags,
                  **aggregate_offsets)
    common.update(zip(("stride_as_d", "stride_as_n"), strides(a_scale, 2)))
    common.update(zip(("stride_keep_b", "stride_keep_k"), strides(keep_idx, 2)))
    common.update(zip(("stride_A_d", "stride_A_n"), A.stride()))
    common.update(zip(("stride_delta_b", "stride_delta_d", "stride_delta_l"), delta.stride()))
    u_strides = dict(zip(("stride_u_b", "stride_u_d", "stride_u_l"), u.stride()))

    def bc(M, variable, name):
        return dict(zip((f"stride_{name}_b", f"stride_{name}_g", f"stride_{name}_n",
                         f"stride_{name}_l"), bc_strides(M, variable)))

    z_strides = dict(zip(("stride_z_b", "stride_z_d", "stride_z_l"), strides(z, 3)))
    dout_strides = dict(zip(("stride_dout_b", "stride_dout_d", "stride_dout_l"), dout.stride()))
    consts = dict(HAS_KEEP_IDX=keep_idx is not None)

    bc_consts = dict(dim_per_group_B=dim // layout.B_groups,
                     dim_per_group_C=dim // layout.C_groups, **bc(main_B, layout.B_variable, "B"),
                     **bc(main_C, layout.C_variable, "C"), B_VARIABLE=layout.B_variable,
                     C_VARIABLE=layout.C_variable)
    agg_maxnreg = aggregates_maxnreg(batch * agg_dblocks * n_ranges, u.device)
    aggregates = LaunchPlan(
        bwd_range_aggregates_kernel, (batch * agg_dblocks, n_ranges), AGGREGATES_DYNAMIC_ARGS,
        device, absent, n_dblocks=agg_dblocks, n_gtiles=n_gtiles, n_ranges=n_ranges,
        chunk_ranges=chunk_size // range_len, range_len=range_len, n_groups=n_groups, **common,
        **u_strides, **z_strides, **dout_strides, **bc_consts,
        **dict(zip(("stride_dlast_b", "stride_dlast_d", "stride_dlast_n"), strides(dlast, 3))),
        SEG=block_t, BLOCK_D=agg_block_d, BLOCK_T=agg_tile, NG=agg_group, HAS_Z=z is not None,
        num_warps=AGGREGATE_WARPS, **consts,
        **({"maxnreg": agg_maxnreg} if agg_maxnreg else {}))
    # du, ddelta and dz are allocated contiguous, like their inputs' shapes.
    main = LaunchPlan(
        bwd_main_kernel, (batch * n_dblocks, n_ranges), MAIN_DYNAMIC_ARGS, device, absent,
        n_dblocks=n_dblocks, n_ranges=n_ranges, chunk_ranges=chunk_size // range_len,
        range_len=range_len, n_gtiles=n_gtiles, n_groups=main_groups, per_program=per_program,
        off_scratch=off_scratch, off_sums=off_sums, sums_row=sums_row, off_dB=off_dB,
        off_dC=off_dC, **common, **u_strides, **z_strides, **dout_strides, **bc_consts,
        **dict(zip(("stride_du_b", "stride_du_d", "stride_du_l"), contiguous_strides(u.shape))),
        **dict(zip(("stride_ddelta_b", "stride_ddelta_d", "stride_ddelta_l"),
                   contiguous_strides(delta.shape))),
        **dict(zip(("stride_dz_b", "stride_dz_d", "stride_dz_l"),
                   contiguous_strides(z.shape) if z is not None else (0, 0, 0))),
        SEG=block_t, BLOCK_D=block_d, BLOCK_T=tile, NG=group, MULTI_GROUP=main_groups > 1,
        HAS_Z=z is not None, WARP_ROWS=rows_per_warp, SUMS_PER_TILE=kept_sums,
        num_warps=num_warps, **consts,
        **({"maxnreg": maxnreg} if maxnreg else {}))
    bc_width = dstate * nvisit
    bc_blocks = triton.cdiv(bc_width, SUMS_BLOCK)
    start_B = triton.cdiv(sums_width, SUMS_BLOCK)
    start_C = start_B + (batch * layout.B_groups * bc_blocks if layout.B_variable else 0)
    end = start_C + (batch * layout.C_groups * bc_blocks if layout.C_variable else 0)
    sums = LaunchPlan(
        bwd_sums_kernel, (end,), SUMS_DYNAMIC_ARGS, device, absent, off_sums=off_sums,
        rows=rows, sums_width=sums_width, sums_row=sums_row, off_dB=off_dB, off_dC=off_dC,
        parts_B=n_dblocks // layout.B_groups, parts_C=n_dblocks // layout.C_groups,
        bc_width=bc_width, bc_blocks=bc_blocks, start_B=start_B, start_C=start_C,
        BLOCK=SUMS_BLOCK, num_warps=4)

    return BackwardPlan(aggregates, main, sums, work_size, sums_width, sums_split,
                        (*B.shape[:-1], nvisit) if layout.B_variable else None,
                        (*C.shape[:-1], nvisit) if layout.C_variable else None)


def selective_scan_bwd(dout, dlast, u, delta, A, B, C, opts, layout, chunk_states, *,
                       chunk_size=None, block_d=None, block_t=None, range_length=None,
                       tile=None, num_warps=4, group=None, maxnreg=None, sums_per_tile=None,
                       plan_key=None):
    """Gradients of selective_scan_fwd's (out, last_state) on checked inputs, from the forward's
    chunk_states. dout (batch, dim, K or L) in any float dtype, dlast (batch, dim, N) or None;
    the keywords force a launch configuration (block_d channels and num_warps per program of
    the main kernel, tile positions per tile of both kernels, block_t positions per segment,
    range_length per program, group states per unrolled group, maxnreg registers per thread,
    sums_per_tile whether the warps exchange their sums of variable dB and dC once per tile
    rather than per group, when a program's channels are whole warps), worked out once per
    signature of the inputs. plan_key: a key that determines that signature (the forward's plan
    key with what varies in dout and dlast), saving the backward its own.

    Returns the gradients of GRAD_INPUTS (u, delta, A, B, C, D, z, delta_bias, initial_state,
    delta_scale, a_scale), each in its input's dtype and shape, None for an absent input or a
    float scale. With keep_idx the gradients of u, delta, z and variable B, C have full length
    L, zero at the positions not kept."""
    if not INTERPRETED and u.get_device() != torch.cuda.current_device():
        with torch.cuda.device(u.device):
            return selective_scan_bwd(dout, dlast, u, delta, A, B, C, opts, layout, chunk_states,
                                      chunk_size=chunk_size, block_d=block_d, block_t=block_t,
                                      range_length=range_length, tile=tile,
                                      num_warps=num_warps, group=group, maxnreg=maxnreg,
                                      sums_per_tile=sums_per_tile, plan_key=plan_key)
    keep_idx, z, h0 = opts.keep_idx, opts.z, opts.initial_state
    # The main kernel reads variable B and C by visited index, like the forward kernel.
    main_B, main_C = B, C
    if keep_idx is not None:
        main_B, main_C = (kept_bc(M, keep_idx, u.shape[2]) if variable else M
                          for M, variable in ((B, layout.B_variable), (C, layout.C_variable)))
    tuning = (chunk_size, block_d, block_t, range_length, tile, num_warps, group, maxnreg,
              sums_per_tile)
    if plan_key is None:
        plan_key = launch_signature(dout, dlast, u, delta, A, B, C, chunk_states, *opts)
    plan = BACKWARD_PLANS.get_or_build(
        (plan_key, layout, tuning),
        lambda: backward_plan(dout, dlast, u, delta, A, B, C, main_B, main_C, opts, layout,
                              tuning))
    delta_mult, delta_scale, a_mult, a_scale = kernel_scales(opts.delta_scale, opts.a_scale,
                                                             *A.shape)
    dh0 = A.new_empty(h0.shape) if h0 is not None else None
    # Absent inputs (None) are never read: their flags are off.
    optional = (opts.delta_bias, delta_scale, a_scale, opts.delta_threshold, keep_idx)
    # Everything the kernels pass on in one workspace; they write every element they later
    # read: no zero fill.
    work = A.new_empty(plan.work_size)

    # 1. Every range's aggregates, and the gradient entering every segment from the rest of its
    # range.
    plan.aggregates(u, delta, A, main_B, main_C, z, *optional, dout, dlast, work, delta_mult,
                    a_mult)

    # 2. Everything else. With keep_idx only the kept positions of du, ddelta and dz are
    # written; the rest of the gradient is zero.
    grad_like = torch.zeros_like if keep_idx is not None else torch.empty_like
    du = grad_like(u, memory_format=torch.contiguous_format)
    ddelta = grad_like(delta, memory_format=torch.contiguous_format)
    dz = grad_like(z, memory_format=torch.contiguous_format) if z is not None else None
    plan.main(u, delta, A, main_B, main_C, opts.D, z, *optional, dout, chunk_states, work, du,
              ddelta, dz, dh0, delta_mult, a_mult)

    # 3. The sums over the programs, in a fixed order: the per-channel ones into parts of one
    # buffer, the variable dB and dC in their dtypes.
    sums = A.new_empty(plan.sums_width)
    dB = B.new_empty(plan.dB_shape) if plan.dB_shape else None
    dC = C.new_empty(plan.dC_shape) if plan.dC_shape else None
    plan.sums(work, sums, dB, dC)

    parts = iter(sums.split_with_sizes(plan.sums_split))
    dA_eff = next(parts).view(A.shape)
    dB = next(parts).view(A.shape) if dB is None else _scattered(dB, B, keep_idx)
    dC = next(parts).view(A.shape) if dC is None else _scattered(dC, C, keep_idx)
    dD, dbias, dscale = (part if x is not None else None
                         for part, x in zip(parts, (opts.D, opts.delta_bias, delta_scale)))
    grad_A = dA_eff  # ∂L/∂A = ∂L/∂A_eff · a_scale
    if a_scale is not None:
        grad_A = dA_eff * a_scale
    elif opts.a_scale is not None:
        grad_A = dA_eff * (a_mult / LOG2E)
    grad_a_scale = None
    if torch.is_tensor(opts.a_scale):
        grad_a_scale = (dA_eff * A).sum(1) if opts.a_scale.dim() == 1 else dA_eff * A
    return du, ddelta, grad_A, dB, dC, dD, dz, dbias, dh0, dscale, grad_a_scale


def _scattered(grad, M, keep_idx):
    """A variable B's or C's gradient at the kept positions as M's full-length gradient (zero
    elsewhere); grad itself without keep_idx."""
    if keep_idx is None:
        return grad
    batch, nvisit = keep_idx.shape
    idx = keep_idx.clamp(0, M.shape[-1] - 1)
    idx = idx.view(batch, *(1,) * (M.dim() - 2), nvisit).expand(*grad.shape)
    return torch.zeros_like(M, memory_format=torch.contiguous_format).scatter_(-1, idx, grad)
