"""Chunked forward kernel of the extension-aware selective scan.

One program owns BLOCK_D channels of one batch row and one segment of the visited positions. It
walks the segment in tiles of BLOCK_T positions; within a tile it runs, for every state n, a
parallel scan over the tile's positions on the pairs (exp(Δ̂·A), Δ̂·u·B), whose combine is
(a1, b1) ∘ (a2, b2) = (a1·a2, a2·b1 + b2), and adds C·h to the output. The launcher takes two
shapes of tile: for sequences over one chunk (2048 positions), 16 bytes of input wide with one
channel row per thread, so that the scan runs in each thread's registers, one position after
another; for shorter ones, the whole sequence as one tile of one channel with its positions
across the threads and the states in a loop (scan_one_tile), so that one pass fills the GPU.
Δ̂ (bias, softplus, scale and threshold applied), Δ̂·u and the output stay in registers across
the states.

States are handled NG at a time, unrolled, with one [BLOCK_D] register vector per state
carrying its value from tile to tile. When N ≤ NG that is all: no state leaves the registers
between tiles. For larger N the states of each group are carried through a two-slot scratch
per program instead. Besides `out`, the kernel writes only states: those entering every CHUNK
visited positions (for the backward pass) and the final one.

When batch × channel blocks cannot fill the GPU, the positions are also split into segments
that run in parallel: a state-only pass gives every segment's end state from a zero start and
its ΣΔ̂ per channel, and the main pass folds those into each segment's start state
(h ← exp(A·ΣΔ̂)·h + h_end per earlier segment).
"""

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from fusedscan.selective_scan.options import BCLayout
from fusedscan.utils.device import INTERPRETED, multiprocessor_count
from fusedscan.utils.kernels import (
    FLAG_INITIAL_STATE, FLAG_LAST_STATE, channel_params, delta_hat, load_A, load_D, option_flags,
    scan_combine,
)
from fusedscan.utils.launch import (
    LaunchPlan, SignatureCache, kernel_scales, launch_signature, strides,
)

# Visited positions between saved states (the backward pass recomputes one chunk at a time).
CHUNK_SIZE = 32 if INTERPRETED else 2048
# States per unrolled group of the kernels: every Mamba-1 model has N <= 16, one group.
MAX_GROUP = 16


@triton.jit
def tile_columns(j0, j_hi, cols, rows, keep_row, stride_keep_k, seqlen, MASK_T: tl.constexpr,
                 HAS_KEEP_IDX: tl.constexpr):
    """Visited indices j of a tile, their positions in the sequence, the column masks, and the
    columns whose keep_idx entry breaks the rules (outside [0, seqlen) or not above the entry
    before it; read as position 0). A full tile (MASK_T false) gets the always-true mask
    cols < BLOCK_T, which the compiler sees through, so its loads stay vectorized (a mask on
    j < j_hi would not); rows past `dim` read the last channel again and are not stored."""
    j = j0 + cols
    if MASK_T:
        col_ok = j < j_hi
    else:
        col_ok = cols < cols.shape[0]
    col_mask = (rows * 0 == 0)[:, None] & col_ok[None, :]
    if HAS_KEEP_IDX:
        pos = tl.load(keep_row + j.to(tl.int64) * stride_keep_k, mask=col_ok, other=0)
        prev = tl.load(keep_row + (j - 1).to(tl.int64) * stride_keep_k, mask=col_ok & (j > 0),
                       other=-1)
        bad = col_ok & ((pos < 0) | (pos >= seqlen) | (pos <= prev))
        pos = tl.where(bad, 0, pos).to(tl.int32)
    else:
        pos = j
        bad = cols < 0
    return j, pos, col_ok, col_mask, bad


@triton.jit
def row_setup(pid, n_dblocks, dim, BLOCK_D: tl.constexpr):
    b = (pid // n_dblocks).to(tl.int64)
    d0 = (pid % n_dblocks) * BLOCK_D
    rows = d0 + tl.arange(0, BLOCK_D)
    row_ok = rows < dim
    in_rows64 = tl.minimum(rows, dim - 1).to(tl.int64)  # rows to read activations from
    return b, d0, rows, row_ok, rows.to(tl.int64), in_rows64


@triton.jit
def bc_source(M_ptr, b, d0, rows64, dim_per_group, stride_b, stride_g, VARIABLE: tl.constexpr):
    """Base of a block's B or C: its group's (N, L) slab if variable, else its rows of (dim, N)."""
    if VARIABLE:
        src = M_ptr + b * stride_b + (d0 // dim_per_group).to(tl.int64) * stride_g
    else:
        src = M_ptr + rows64 * stride_g
    return src


@triton.jit
def load_bc(src, n, stride_n, offs, row_ok, state_ok, col_mask, ACC: tl.constexpr,
             MASK_T: tl.constexpr, VARIABLE: tl.constexpr):
    """B or C of state n as a [BLOCK_D, BLOCK_T] tile (variable) or a [BLOCK_D, 1] column."""
    if VARIABLE:
        mask = col_mask & state_ok if MASK_T else state_ok
        M = tl.load(src + n * stride_n + offs, mask=mask, other=0.0).to(ACC)
    else:
        M = tl.load(src + n * stride_n, mask=row_ok & state_ok, other=0.0)[:, None]
    return M


@triton.jit
def scan_state(
    n, state_ok, h, A_n, dt, dtu, y, col_mask, row_ok, bc_offs_B, bc_offs_C, is_first, is_last,
    B_src, stride_B_n, C_src, stride_C_n,
    MASK_T: tl.constexpr, B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr,
    STATE_ONLY: tl.constexpr,
):
    """Scans state n over one tile from the carry h; returns the state after the tile's last
    column and y plus C_n·h_n. The carry enters through the first column's b
    (b_0 += a_0·h), so the scan's b component is the state itself."""
    B_n = load_bc(B_src, n, stride_B_n, bc_offs_B, row_ok, state_ok, col_mask, dtu.dtype,
                   MASK_T, B_VARIABLE)
    b = dtu * B_n
    a = tl.exp2(dt * A_n[:, None])
    b = tl.where(is_first, a * h[:, None] + b, b)
    _, h = tl.associative_scan((a, b), axis=1, combine_fn=scan_combine)
    if not STATE_ONLY:
        y += h * load_bc(C_src, n, stride_C_n, bc_offs_C, row_ok, state_ok, col_mask, dtu.dtype,
                          MASK_T, C_VARIABLE)
    # −0.0 is the exact identity of +, so the compiler drops the adds of non-last columns.
    return tl.sum(tl.where(is_last, h, -0.0), axis=1), y


@triton.jit
def scan_states(
    n0, dstate, hs, As, dt, dtu, y, col_mask, row_ok, bc_offs_B, bc_offs_C, is_first, is_last,
    B_src, stride_B_n, C_src, stride_C_n,
    NG: tl.constexpr, MULTI_GROUP: tl.constexpr, MASK_T: tl.constexpr, B_VARIABLE: tl.constexpr,
    C_VARIABLE: tl.constexpr, STATE_ONLY: tl.constexpr,
):
    """scan_state for states n0 .. n0+NG-1, unrolled, from the carries `hs`; returns the
    carries at the tile's end and y."""
    new_hs = ()
    for i in tl.static_range(NG):
        n = n0 + i
        if MULTI_GROUP:
            state_ok = n < dstate  # false for the padding states of the last group
        else:
            state_ok = True  # a single group has exactly N states: no mask on the B/C loads
        h, y = scan_state(n, state_ok, hs[i], As[i], dt, dtu, y, col_mask, row_ok, bc_offs_B,
                          bc_offs_C, is_first, is_last, B_src, stride_B_n, C_src, stride_C_n,
                          MASK_T, B_VARIABLE, C_VARIABLE, STATE_ONLY)
        new_hs = new_hs + (h,)
    return new_hs, y


@triton.jit
def store_states(dst_rows, n0, dstate, hs, row_ok, NG: tl.constexpr):
    for i in tl.static_range(NG):
        tl.store(dst_rows + n0 + i, hs[i], mask=row_ok & (n0 + i < dstate))


@triton.jit
def load_states(src_rows, n0, dstate, row_ok, NG: tl.constexpr):
    hs = ()
    for i in tl.static_range(NG):
        hs = hs + (tl.load(src_rows + n0 + i, mask=row_ok & (n0 + i < dstate), other=0.0,
                           cache_modifier=".cg"),)
    return hs


@triton.jit
def load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, n0, dstate,
             row_ok, NG: tl.constexpr):
    As = ()
    for i in tl.static_range(NG):
        As = As + (load_A(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult,
                           n0 + i, row_ok & (n0 + i < dstate)),)
    return As


@triton.jit
def start_states(n0, dstate, seg, dim, row_ok, h0_rows, stride_h0_n, seg_rows,
                  seg_dsum_ptr, seg_states_ptr, A_rows, stride_A_n, a_scale_rows, stride_as_n,
                  flags, a_mult, NG: tl.constexpr, STATE_ONLY: tl.constexpr):
    """States n0 .. n0+NG-1 entering segment `seg`. The earlier segments are folded in one
    after another, all states at once, so that one segment's loads wait once."""
    hs = ()
    As = ()
    for i in tl.static_range(NG):
        n = n0 + i
        ok = row_ok & (n < dstate)
        if STATE_ONLY:
            h = tl.zeros(row_ok.shape, A_rows.dtype.element_ty)
        else:
            h = tl.load(h0_rows + n * stride_h0_n, mask=ok & ((flags & FLAG_INITIAL_STATE) != 0),
                        other=0.0)
        hs = hs + (h,)
        As = As + (load_A(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, n, ok),)
    if not STATE_ONLY:
        hs = fold_segments(hs, As, 0, 1, seg, n0, dstate, dim, row_ok, seg_rows, seg_dsum_ptr,
                           seg_states_ptr, NG)
    return hs


@triton.jit
def fold_segments(hs, As, s_first, s_step, count, n0, dstate, dim, row_ok, seg_rows, dsum_ptr,
                  ends_ptr, NG: tl.constexpr):
    """Carries hs (states n0 .. n0+NG-1) across `count` segments s_first, s_first + s_step, ...:
    h ← exp(A·Σ Δ̂ over the segment)·h + what the segment adds from a zero carry. dsum_ptr holds
    (batch, segments, dim), ends_ptr (batch, segments, dim, N); seg_rows is the rows' offset of
    segment 0. The forward carries states left to right, the backward gradients right to left.
    One segment's loads wait once for all states."""
    for q in range(count):
        s = s_first + q * s_step
        dsum = tl.load(dsum_ptr + seg_rows + s * dim, mask=row_ok, other=0.0)
        end_rows = ends_ptr + (seg_rows + s * dim) * dstate
        folded = ()
        for i in tl.static_range(NG):
            end = tl.load(end_rows + n0 + i, mask=row_ok & (n0 + i < dstate), other=0.0)
            folded = folded + (tl.exp2(As[i] * dsum) * hs[i] + end,)
        hs = folded
    return hs


@triton.jit
def tile_inputs(
    j0, j_hi, seqlen, rows, cols, u_rows, delta_rows, keep_row, stride_u_l, stride_delta_l,
    stride_keep_k, stride_B_l, stride_C_l, delta_bias, delta_scale, delta_threshold, D, flags,
    BLOCK_T: tl.constexpr, MASK_T: tl.constexpr, HAS_KEEP_IDX: tl.constexpr,
):
    """What every state's scan over positions [j0, j0 + BLOCK_T) (those < j_hi) reads: the
    columns (j, pos, col_ok, col_mask), Δ̂, Δ̂·u, y = D·u, the offsets of B and C and the first-
    and last-column masks. A keep_idx entry that breaks the rules turns its u into NaN: out and
    the state are NaN from there on."""
    ACC = D.dtype  # float32, or float64 for float64 inputs
    j, pos, col_ok, col_mask, bad = tile_columns(j0, j_hi, cols, rows, keep_row, stride_keep_k,
                                                 seqlen, MASK_T, HAS_KEEP_IDX)
    u = tl.load(u_rows + pos[None, :] * stride_u_l, mask=col_mask, other=0.0).to(ACC)
    if HAS_KEEP_IDX:
        u = tl.where(bad[None, :], float("nan"), u)
    dt = tl.load(delta_rows + pos[None, :] * stride_delta_l, mask=col_mask, other=0.0).to(ACC)
    dt, _, _ = delta_hat(dt, delta_bias, delta_scale, delta_threshold, flags)
    if MASK_T:
        # Padding positions become identity steps (a = 1, b = 0), so the state at the tile's
        # last column is the state after its last real position.
        dt = tl.where(col_mask, dt, 0.0)
    dtu = dt * u
    y = u * D[:, None]
    # Variable B and C are loaded as [BLOCK_D, BLOCK_T] tiles whose rows repeat one address
    # row, in the tile's register layout (every thread reads the same 16 bytes). They are
    # indexed by visited index: with keep_idx the launcher passes copies of the kept positions,
    # so these loads stay vectorized.
    zero_rows = (rows * 0)[:, None]
    bc_offs_B = zero_rows + j[None, :] * stride_B_l
    bc_offs_C = zero_rows + j[None, :] * stride_C_l
    is_first = (cols == 0)[None, :]
    is_last = (cols == BLOCK_T - 1)[None, :]
    return j, pos, col_ok, col_mask, dt, dtu, y, bc_offs_B, bc_offs_C, is_first, is_last


@triton.jit
def tile_output(y, j, pos, col_ok, col_mask, row_ok, z_rows, stride_z_l, out_rows,
                HAS_Z: tl.constexpr):
    """out of the tile's columns: y, gated by silu(z) when z is given."""
    if HAS_Z:
        z = tl.load(z_rows + pos[None, :] * stride_z_l, mask=col_mask, other=0.0).to(y.dtype)
        y *= z * tl.sigmoid(z)
    tl.store(out_rows + j[None, :], y.to(out_rows.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def scan_tile(
    j0, j_hi, seqlen, hs, As, rows, row_ok, cols,
    u_rows, delta_rows, z_rows, out_rows, keep_row,
    stride_u_l, stride_delta_l, stride_z_l, stride_keep_k,
    A_rows, stride_A_n, a_scale_rows, stride_as_n, a_mult,
    B_src, stride_B_n, stride_B_l, C_src, stride_C_n, stride_C_l,
    delta_bias, delta_scale, delta_threshold, D, flags,
    carry_src, carry_dst, chunk_rows, dstate, n_groups,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, NG: tl.constexpr, MULTI_GROUP: tl.constexpr,
    MASK_T: tl.constexpr, HAS_Z: tl.constexpr, HAS_KEEP_IDX: tl.constexpr, B_VARIABLE: tl.constexpr,
    C_VARIABLE: tl.constexpr, STATE_ONLY: tl.constexpr,
):
    """Scans positions [j0, j0 + BLOCK_T) (those < j_hi) for all states. Returns the register
    carries (unchanged when the states go through the scratch) and the tile's Δ̂."""
    j, pos, col_ok, col_mask, dt, dtu, y, bc_offs_B, bc_offs_C, is_first, is_last = tile_inputs(
        j0, j_hi, seqlen, rows, cols, u_rows, delta_rows, keep_row, stride_u_l, stride_delta_l,
        stride_keep_k, stride_B_l, stride_C_l, delta_bias, delta_scale, delta_threshold, D, flags,
        BLOCK_T, MASK_T, HAS_KEEP_IDX)
    is_chunk_start = (j0 % CHUNK) == 0
    ck_rows = chunk_rows + (j0 // CHUNK) * dstate
    if not MULTI_GROUP:
        if not STATE_ONLY:
            if is_chunk_start:
                store_states(ck_rows, 0, dstate, hs, row_ok, NG)
        hs, y = scan_states(0, dstate, hs, As, dt, dtu, y, col_mask, row_ok, bc_offs_B,
                            bc_offs_C, is_first, is_last, B_src, stride_B_n, C_src, stride_C_n,
                            NG, MULTI_GROUP, MASK_T, B_VARIABLE, C_VARIABLE, STATE_ONLY)
    else:
        for g in range(n_groups):
            n0 = g * NG
            hs_g = load_states(carry_src, n0, dstate, row_ok, NG)
            if not STATE_ONLY:
                if is_chunk_start:
                    store_states(ck_rows, n0, dstate, hs_g, row_ok, NG)
            As_g = load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult,
                           n0, dstate, row_ok, NG)
            hs_g, y = scan_states(n0, dstate, hs_g, As_g, dt, dtu, y, col_mask, row_ok,
                                  bc_offs_B, bc_offs_C, is_first, is_last, B_src, stride_B_n,
                                  C_src, stride_C_n, NG, MULTI_GROUP, MASK_T, B_VARIABLE,
                                  C_VARIABLE, STATE_ONLY)
            store_states(carry_dst, n0, dstate, hs_g, row_ok, NG)
        tl.debug_barrier()
    if not STATE_ONLY:
        tile_output(y, j, pos, col_ok, col_mask, row_ok, z_rows, stride_z_l, out_rows, HAS_Z)
    return hs, dt


@triton.jit
def scan_one_tile(
    nvisit, seqlen, dstate, rows, row_ok, cols, u_rows, delta_rows, z_rows, out_rows, keep_row,
    stride_u_l, stride_delta_l, stride_z_l, stride_keep_k,
    A_rows, stride_A_n, a_scale_rows, stride_as_n, a_mult,
    B_src, stride_B_n, stride_B_l, C_src, stride_C_n, stride_C_l,
    delta_bias, delta_scale, delta_threshold, D, flags, h0_rows, stride_h0_n,
    chunk_rows, last_rows,
    BLOCK_T: tl.constexpr, HAS_Z: tl.constexpr, HAS_KEEP_IDX: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr, LOOP_STAGES: tl.constexpr,
    LOOP_UNROLL: tl.constexpr,
):
    """The whole visited sequence (nvisit <= BLOCK_T <= CHUNK) as one tile. The states go one
    after another through a loop (software-pipelined over LOOP_STAGES states, so that later
    states' B and C are on their way, or unrolled LOOP_UNROLL times): each state's carry enters
    and leaves through memory, so only one or two states' B, C and scan are in registers."""
    j, pos, col_ok, col_mask, dt, dtu, y, bc_offs_B, bc_offs_C, is_first, is_last = tile_inputs(
        0, nvisit, seqlen, rows, cols, u_rows, delta_rows, keep_row, stride_u_l, stride_delta_l,
        stride_keep_k, stride_B_l, stride_C_l, delta_bias, delta_scale, delta_threshold, D, flags,
        BLOCK_T, True, HAS_KEEP_IDX)
    for n in tl.range(dstate, num_stages=LOOP_STAGES, loop_unroll_factor=LOOP_UNROLL):
        A_n = load_A(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, n, row_ok)
        h = tl.load(h0_rows + n * stride_h0_n, mask=row_ok & ((flags & FLAG_INITIAL_STATE) != 0),
                    other=0.0)
        tl.store(chunk_rows + n, h, mask=row_ok)
        h, y = scan_state(n, True, h, A_n, dt, dtu, y, col_mask, row_ok, bc_offs_B, bc_offs_C,
                          is_first, is_last, B_src, stride_B_n, C_src, stride_C_n, True,
                          B_VARIABLE, C_VARIABLE, False)
        tl.store(last_rows + n, h, mask=row_ok & ((flags & FLAG_LAST_STATE) != 0))
    tile_output(y, j, pos, col_ok, col_mask, row_ok, z_rows, stride_z_l, out_rows, HAS_Z)


@triton.jit(do_not_specialize=["flags", "n_dblocks", "n_segs", "seg_tiles", "n_groups"])
def selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, delta_scale_ptr,
    a_scale_ptr, delta_threshold_ptr, keep_idx_ptr, h0_ptr,
    out_ptr, last_state_ptr, chunk_states_ptr, scratch_ptr, delta_mult, a_mult,
    dim, dstate, seqlen, nvisit, dim_per_group_B, dim_per_group_C, n_dblocks, n_segs, seg_tiles,
    n_groups, flags,
    stride_u_b, stride_u_d, stride_u_l,
    stride_delta_b, stride_delta_d, stride_delta_l,
    stride_z_b, stride_z_d, stride_z_l,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n, stride_B_l,
    stride_C_b, stride_C_g, stride_C_n, stride_C_l,
    stride_as_d, stride_as_n,
    stride_keep_b, stride_keep_k,
    stride_h0_b, stride_h0_d, stride_h0_n,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, NG: tl.constexpr,
    MULTI_GROUP: tl.constexpr, HAS_Z: tl.constexpr, HAS_KEEP_IDX: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr, STATE_ONLY: tl.constexpr,
    ONE_TILE: tl.constexpr, LOOP_STAGES: tl.constexpr, LOOP_UNROLL: tl.constexpr,
):
    """Grid (batch · n_dblocks, segments). The arguments up to a_mult change from call to call
    (FWD_DYNAMIC_ARGS), the others are fixed by the inputs' shapes, strides and options.
    out (batch, dim, nvisit) is contiguous. With STATE_ONLY, writes each segment's end state
    from a zero start and its ΣΔ̂ to the scratch; otherwise writes out, chunk_states (batch,
    dim, ⌈nvisit / CHUNK⌉, N) and, from the last segment, last_state (batch, dim, N) if flags
    has FLAG_LAST_STATE. The scratch holds seg_states (batch, n_segs, dim, N) and seg_dsum
    (batch, n_segs, dim) when n_segs > 1, then, with MULTI_GROUP (n_groups = ⌈N / NG⌉ > 1),
    the states carried between tiles (2 slots · BLOCK_D · N per program). ONE_TILE (nvisit <= BLOCK_T, one segment) takes the sequence as one tile and its
    states in a loop (scan_one_tile; LOOP_STAGES, LOOP_UNROLL): any N, no scratch."""
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    batch = tl.num_programs(0) // n_dblocks
    b, d0, rows, row_ok, rows64, in_rows64 = row_setup(pid, n_dblocks, dim, BLOCK_D)
    cols = tl.arange(0, BLOCK_T)
    n_chunks = tl.cdiv(nvisit, CHUNK)

    u_rows = (u_ptr + b * stride_u_b + in_rows64 * stride_u_d)[:, None]
    delta_rows = (delta_ptr + b * stride_delta_b + in_rows64 * stride_delta_d)[:, None]
    z_rows = (z_ptr + b * stride_z_b + in_rows64 * stride_z_d)[:, None]
    out_rows = (out_ptr + (b * dim + rows64) * nvisit)[:, None]
    keep_row = keep_idx_ptr + b * stride_keep_b
    A_rows = A_ptr + rows64 * stride_A_d
    a_scale_rows = a_scale_ptr + rows64 * stride_as_d
    # Every block of BLOCK_D channels lies in one group of B and of C (the launcher picks
    # BLOCK_D so).
    B_src = bc_source(B_ptr, b, d0, rows64, dim_per_group_B, stride_B_b, stride_B_g, B_VARIABLE)
    C_src = bc_source(C_ptr, b, d0, rows64, dim_per_group_C, stride_C_b, stride_C_g, C_VARIABLE)
    delta_bias, delta_scale, delta_threshold = channel_params(
        rows, row_ok, delta_bias_ptr, delta_scale_ptr, delta_threshold_ptr, flags, delta_mult)
    D = load_D(D_ptr, rows, row_ok, flags)

    chunk_rows = chunk_states_ptr + (b * dim + rows64) * n_chunks * dstate
    seg_states_ptr = scratch_ptr
    seg_dsum_ptr = scratch_ptr + batch * n_segs * dim * dstate
    carry = (seg_dsum_ptr + batch * n_segs * dim
             + (pid * n_segs + seg).to(tl.int64) * (2 * BLOCK_D) * dstate)
    carry_rows = carry + tl.arange(0, BLOCK_D) * dstate
    slot = BLOCK_D * dstate
    seg_rows = (b * n_segs) * dim + rows64  # row of segment 0 in seg_states / seg_dsum
    h0_rows = h0_ptr + b * stride_h0_b + rows64 * stride_h0_d
    if ONE_TILE:
        scan_one_tile(
            nvisit, seqlen, dstate, rows, row_ok, cols, u_rows, delta_rows, z_rows, out_rows,
            keep_row, stride_u_l, stride_delta_l, stride_z_l, stride_keep_k,
            A_rows, stride_A_n, a_scale_rows, stride_as_n, a_mult,
            B_src, stride_B_n, stride_B_l, C_src, stride_C_n, stride_C_l,
            delta_bias, delta_scale, delta_threshold, D, flags, h0_rows, stride_h0_n,
            chunk_rows, last_state_ptr + (b * dim + rows64) * dstate,
            BLOCK_T, HAS_Z, HAS_KEEP_IDX, B_VARIABLE, C_VARIABLE, LOOP_STAGES, LOOP_UNROLL)
        return

    # Start state of this segment: the initial state folded through every earlier segment
    # (zero for the state-only pass).
    if MULTI_GROUP:
        for g in range(n_groups):
            hs_g = start_states(g * NG, dstate, seg, dim, row_ok, h0_rows, stride_h0_n, seg_rows,
                                seg_dsum_ptr, seg_states_ptr, A_rows, stride_A_n, a_scale_rows,
                                stride_as_n, flags, a_mult, NG, STATE_ONLY)
            store_states(carry_rows, g * NG, dstate, hs_g, row_ok, NG)
        tl.debug_barrier()
        hs = ()  # unused: the carries live in the scratch
        As = ()
    else:
        hs = start_states(0, dstate, seg, dim, row_ok, h0_rows, stride_h0_n, seg_rows,
                          seg_dsum_ptr, seg_states_ptr, A_rows, stride_A_n, a_scale_rows,
                          stride_as_n, flags, a_mult, NG, STATE_ONLY)
        As = load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, flags, a_mult, 0,
                     dstate, row_ok, NG)

    # In tiles, so that the compiler sees every tile start aligned for vector loads.
    j_lo = seg * seg_tiles * BLOCK_T
    j_hi = tl.minimum(j_lo + seg_tiles * BLOCK_T, nvisit)
    n_full = (j_hi - j_lo) // BLOCK_T
    dsum = tl.zeros([BLOCK_D, BLOCK_T], A_ptr.dtype.element_ty)
    for k in range(n_full):
        hs, dt = scan_tile(
            j_lo + k * BLOCK_T, j_hi, seqlen, hs, As, rows, row_ok, cols,
            u_rows, delta_rows, z_rows, out_rows, keep_row,
            stride_u_l, stride_delta_l, stride_z_l, stride_keep_k,
            A_rows, stride_A_n, a_scale_rows, stride_as_n, a_mult,
            B_src, stride_B_n, stride_B_l, C_src, stride_C_n, stride_C_l,
            delta_bias, delta_scale, delta_threshold, D, flags,
            carry_rows + (k % 2) * slot, carry_rows + ((k + 1) % 2) * slot, chunk_rows, dstate,
            n_groups, CHUNK, BLOCK_T, NG, MULTI_GROUP, False, HAS_Z, HAS_KEEP_IDX, B_VARIABLE,
            C_VARIABLE, STATE_ONLY)
        if STATE_ONLY:
            dsum += dt
    n_tiles = n_full
    if j_lo + n_full * BLOCK_T < j_hi:
        hs, dt = scan_tile(
            j_lo + n_full * BLOCK_T, j_hi, seqlen, hs, As, rows, row_ok, cols,
            u_rows, delta_rows, z_rows, out_rows, keep_row,
            stride_u_l, stride_delta_l, stride_z_l, stride_keep_k,
            A_rows, stride_A_n, a_scale_rows, stride_as_n, a_mult,
            B_src, stride_B_n, stride_B_l, C_src, stride_C_n, stride_C_l,
            delta_bias, delta_scale, delta_threshold, D, flags,
            carry_rows + (n_full % 2) * slot, carry_rows + ((n_full + 1) % 2) * slot, chunk_rows,
            dstate, n_groups, CHUNK, BLOCK_T, NG, MULTI_GROUP, True, HAS_Z, HAS_KEEP_IDX,
            B_VARIABLE, C_VARIABLE, STATE_ONLY)
        if STATE_ONLY:
            dsum += dt
        n_tiles += 1

    if STATE_ONLY:
        tl.store(seg_dsum_ptr + seg_rows + seg * dim, tl.sum(dsum, axis=1), mask=row_ok)
        dst_rows = seg_states_ptr + (seg_rows + seg * dim) * dstate
    else:
        dst_rows = last_state_ptr + (b * dim + rows64) * dstate
    if STATE_ONLY or (seg == n_segs - 1 and (flags & FLAG_LAST_STATE) != 0):
        if not MULTI_GROUP:
            store_states(dst_rows, 0, dstate, hs, row_ok, NG)
        else:
            for g in range(n_groups):
                hs_g = load_states(carry_rows + (n_tiles % 2) * slot, g * NG, dstate, row_ok, NG)
                store_states(dst_rows, g * NG, dstate, hs_g, row_ok, NG)


def bc_strides(M, variable):
    """(batch, group, state, position) strides of a variable B/C; a fixed (dim, N) one puts its
    channel stride in the group slot and has no batch or position stride."""
    if not variable:
        return 0, M.stride(0), M.stride(1), 0
    if M.dim() == 3:
        return M.stride(0), 0, M.stride(1), M.stride(2)
    return M.stride(0), M.stride(1), M.stride(2), M.stride(3)


def fit_block_d(block_d, channels_per_group, dim):
    """Halves block_d until a block of channels lies inside one group of B and of C."""
    while channels_per_group != dim and channels_per_group % block_d:
        block_d //= 2
    return block_d


def kept_bc(M, keep_idx, seqlen):
    """A variable B or C (batch, [G,] N, L) at the kept positions: (batch, [G,] N, K). Indices
    outside [0, L) are clamped here (the kernel turns their outputs into NaN)."""
    idx = keep_idx.clamp(0, seqlen - 1)
    idx = idx.view(idx.shape[0], *(1,) * (M.dim() - 2), idx.shape[1])
    return M.gather(-1, idx.expand(*M.shape[:-1], keep_idx.shape[1]))


def one_tile_loop(size, num_warps):
    """(LOOP_STAGES, LOOP_UNROLL) of a one-tile launch's loop over the states, by the inputs'
    element size and the warps: B and C of three states in flight, or, for 16-bit inputs over
    four warps or more, two states per iteration (H200, one tile of 2048 positions, batch 8:
    bf16 0.515 ms plain, 0.477 pipelined, 0.438 unrolled; float32 0.631, 0.619, 0.643)."""
    return (1, 2) if size == 2 and num_warps >= 4 else (3, 1)


def forward_config(u, delta, channels_per_group, batch, dim, nvisit, chunk_size):
    """(BLOCK_D, BLOCK_T, segments, num_warps, maxnreg).

    Up to one chunk of positions (2048 on a GPU): the whole sequence as one tile, one channel
    per program with its positions across the threads, 16 per thread (mamba-ssm's block
    shape; float32 at most two warps, so 32 at 2048), the states in a loop (one_tile_loop):
    one pass, no segments. With 16-bit inputs only while the 128-channel blocks below cannot
    fill the SMs by themselves (H200: bf16 1×1536×2048 0.108 → 0.067 ms, 8×1536×2048 0.454 →
    0.438; at 16×2048×2048 the blocks below win, 1.06 against 1.22 ms; float32 one tile wins
    at every batch: bench/sweep_forward.py --tiles, docs/kernel-log.md).
    Longer sequences: one channel row per thread, BLOCK_T positions of 16 bytes of input
    scanned one after another in its registers. With 16-bit inputs a cap of 128 registers (a
    few spills) lets four programs share an SM. Few channel blocks on a short sequence take
    blocks of 64 channels (2 warps): twice the programs before positions are split
    (1×1536×512 0.23 → 0.11 ms)."""
    size = max(u.element_size(), delta.element_size())
    sms = multiprocessor_count(u.device)
    if nvisit <= chunk_size and (size > 2 or batch * triton.cdiv(dim, 128) < sms):
        # Tiles of 512, 1024 or 2048 positions (16 or 32 in the interpreter): each is a kernel
        # to compile, so shorter sequences share the 512 one.
        block_t = min(chunk_size, max(32 if INTERPRETED else 512, triton.next_power_of_2(nvisit)))
        # The interpreter's cost grows with the number of programs: 4 channels each there.
        block_d = 4 if INTERPRETED else 1
        warps = max(1, block_t // 512)
        if size > 2:
            warps = min(warps, 2)
        return fit_block_d(block_d, channels_per_group, dim), block_t, 1, warps, None
    if INTERPRETED:
        block_d, block_t, warps, maxnreg, per_sm = 4, 16, 1, None, 4
    else:
        warps = 2 if batch * triton.cdiv(dim, 128) * 4 <= sms and nvisit <= 4096 else 4
        block_d = 32 * warps
        block_t = 16 // size
        maxnreg = 128 if size == 2 else None
        per_sm = 4
    block_d = fit_block_d(block_d, channels_per_group, dim)
    programs = batch * triton.cdiv(dim, block_d)
    # Split the positions into segments until about per_sm programs per SM run; each segment
    # but the first costs one more state-only pass over its positions. With 16-bit inputs
    # per_sm programs is what an SM holds (128 registers): rounded down, so that no last,
    # partial wave of programs runs (H200 bf16 8×1536×2048: 0.617 → 0.454 ms). Unbounded
    # float32 programs fit two per SM: rounding down measured slower there.
    fill = per_sm * sms // programs if size == 2 else triton.cdiv(per_sm * sms, programs)
    segments = max(1, min(triton.cdiv(nvisit, block_t), fill))
    return block_d, block_t, segments, warps, maxnreg


# Arguments of selective_scan_fwd_kernel that change from call to call (the leading ones).
FWD_DYNAMIC_ARGS = 19
# ForwardPlans by the inputs' launch_signature, layout and tuning.
FORWARD_PLANS = SignatureCache()


class ForwardPlan(NamedTuple):
    """What selective_scan_fwd decides from the inputs' signature: the launches (the state-only
    pass when positions are split into segments, then the main pass) and the sizes of what it
    allocates."""
    launches: tuple
    nvisit: int
    n_chunks: int
    scratch_size: int  # 0: no scratch needed


def forward_plan(u, delta, A, B, C, opts, layout, tuning, last_state=True):
    """The ForwardPlan of selective_scan_fwd for these inputs (B and C as the kernel reads
    them), tuning (chunk_size, block_d, block_t, num_segments, num_warps, maxnreg) and
    last_state (whether the kernel writes it)."""
    chunk_size, block_d, block_t, num_segments, num_warps, maxnreg = tuning
    batch, dim, L = u.shape
    dstate = A.shape[1]
    keep_idx, z, h0 = opts.keep_idx, opts.z, opts.initial_state
    nvisit = opts.visited or L
    chunk_size = chunk_size or CHUNK_SIZE
    # Channels per group of B and C together: a channel block must not straddle a group.
    per_group = dim // math.lcm(layout.B_groups, layout.C_groups)
    auto_d, auto_t, auto_segs, auto_warps, auto_maxnreg = forward_config(
        u, delta, per_group, batch, dim, nvisit, chunk_size)
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
    # One tile: the states in a loop (scan_one_tile). Otherwise states per unrolled group: all
    # of them when N <= MAX_GROUP, else groups of at most MAX_GROUP carried through the scratch
    # between tiles.
    one_tile = n_tiles == 1
    n_groups = 1 if one_tile else triton.cdiv(dstate, MAX_GROUP)
    # The kernel's scratch: seg_states and seg_dsum, then the carries of several state groups.
    scratch_size = 0
    if segs > 1 or n_groups > 1:
        scratch_size = batch * segs * dim * (dstate + 1) + (
            batch * n_dblocks * segs * 2 * block_d * dstate if n_groups > 1 else 0)
    _, delta_scale, _, a_scale = kernel_scales(opts.delta_scale, opts.a_scale, dim, dstate)
    static = dict(
        dim=dim, dstate=dstate, seqlen=L, nvisit=nvisit, dim_per_group_B=dim // layout.B_groups,
        dim_per_group_C=dim // layout.C_groups, n_dblocks=n_dblocks, n_segs=segs,
        seg_tiles=seg_tiles, n_groups=n_groups,
        flags=option_flags(opts.D, opts.delta_bias, opts.delta_softplus, delta_scale, a_scale,
                           opts.delta_threshold, h0, last_state=last_state),
    )
    (static["stride_u_b"], static["stride_u_d"], static["stride_u_l"]) = u.stride()
    (static["stride_delta_b"], static["stride_delta_d"], static["stride_delta_l"]) = delta.stride()
    (static["stride_z_b"], static["stride_z_d"], static["stride_z_l"]) = strides(z, 3)
    (static["stride_A_d"], static["stride_A_n"]) = A.stride()
    (static["stride_B_b"], static["stride_B_g"], static["stride_B_n"],
     static["stride_B_l"]) = bc_strides(B, layout.B_variable)
    (static["stride_C_b"], static["stride_C_g"], static["stride_C_n"],
     static["stride_C_l"]) = bc_strides(C, layout.C_variable)
    (static["stride_as_d"], static["stride_as_n"]) = strides(a_scale, 2)
    (static["stride_keep_b"], static["stride_keep_k"]) = strides(keep_idx, 2)
    (static["stride_h0_b"], static["stride_h0_d"], static["stride_h0_n"]) = strides(h0, 3)
    static.update(
        CHUNK=chunk_size, BLOCK_D=block_d, BLOCK_T=block_t, NG=triton.cdiv(dstate, n_groups),
        MULTI_GROUP=n_groups > 1, HAS_Z=z is not None, HAS_KEEP_IDX=keep_idx is not None,
        B_VARIABLE=layout.B_variable, C_VARIABLE=layout.C_variable, ONE_TILE=one_tile,
        num_warps=num_warps, **({"maxnreg": maxnreg} if maxnreg else {}))
    static["LOOP_STAGES"], static["LOOP_UNROLL"] = one_tile_loop(
        max(u.element_size(), delta.element_size()), num_warps) if one_tile else (1, 1)
    device = u.get_device()
    absent = A.new_empty(1)
    launches = tuple(
        LaunchPlan(selective_scan_fwd_kernel, (batch * n_dblocks, n), FWD_DYNAMIC_ARGS, device,
                   absent, **static, STATE_ONLY=state_only)
        for state_only, n in ((True, segs - 1), (False, segs)) if n > 0)
    return ForwardPlan(launches, nvisit, triton.cdiv(nvisit, chunk_size), scratch_size)


def selective_scan_fwd(u, delta, A, B, C, opts, layout=BCLayout(), *, last_state=True,
                       chunk_size=None, block_d=None, block_t=None, num_segments=None,
                       num_warps=None, maxnreg=None, plan_key=None):
    """Launches the forward kernels on checked inputs (opts: ScanOptions, layout: BCLayout;
    last_state: whether to compute it; the other keywords force a launch configuration). The launch configuration is worked out
    once per signature of the inputs (shapes, strides, dtypes, alignment, options) and kept.
    plan_key: a key of the plan already found for the arguments these inputs were made from
    (the PlanKey of selective_scan_ext's checks), saving the launcher a launch_signature of its
    own; it must determine the inputs' own signature (the contiguous copies of the channel
    vectors and the gathered B and C are fresh allocations, so it does).

    Returns out (batch, dim, K or L) in u's dtype, last_state (batch, dim, N), None if not
    asked for, and chunk_states (batch, dim, ⌈K/chunk_size⌉, N), the state entering every
    chunk; states have A's dtype (float32, or float64 for float64 inputs)."""
    if not INTERPRETED and u.get_device() != torch.cuda.current_device():
        with torch.cuda.device(u.device):
            return selective_scan_fwd(u, delta, A, B, C, opts, layout, last_state=last_state,
                                      chunk_size=chunk_size, block_d=block_d, block_t=block_t,
                                      num_segments=num_segments, num_warps=num_warps,
                                      maxnreg=maxnreg, plan_key=plan_key)
    keep_idx = opts.keep_idx
    # The kernel reads variable B and C by visited index (vector loads): gather the kept ones.
    if keep_idx is not None:
        B, C = (kept_bc(M, keep_idx, u.shape[2]) if variable else M
                for M, variable in ((B, layout.B_variable), (C, layout.C_variable)))
    tuning = (chunk_size, block_d, block_t, num_segments, num_warps, maxnreg)
    if plan_key is None:
        plan_key = launch_signature(u, delta, A, B, C, *opts)
    plan = FORWARD_PLANS.get_or_build(
        (plan_key, layout, tuning, last_state),
        lambda: forward_plan(u, delta, A, B, C, opts, layout, tuning, last_state))
    batch, dim, _ = u.shape
    dstate = A.shape[1]
    out = u.new_empty((batch, dim, plan.nvisit))
    last_state = A.new_empty((batch, dim, dstate)) if last_state else None
    chunk_states = A.new_empty((batch, dim, plan.n_chunks, dstate))
    scratch = A.new_empty(plan.scratch_size) if plan.scratch_size else None
    delta_mult, delta_scale, a_mult, a_scale = kernel_scales(opts.delta_scale, opts.a_scale, dim,
                                                             dstate)
    # Absent inputs (None) are never read: their flags are off.
    args = (u, delta, A, B, C, opts.D, opts.z, opts.delta_bias, delta_scale, a_scale,
            opts.delta_threshold, keep_idx, opts.initial_state, out, last_state, chunk_states,
            scratch, delta_mult, a_mult)
    for launch in plan.launches:
        launch(*args)
    return out, last_state, chunk_states
