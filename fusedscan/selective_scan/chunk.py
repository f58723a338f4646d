"""Chunked forward kernel of the extension-aware selective scan.

One program owns BLOCK_D channels of one batch row and one segment of the visited positions. It
walks the segment in tiles of BLOCK_T positions; within a tile it runs, for every state n, a
parallel scan over the tile's positions on the pairs (exp(Δ̂·A), Δ̂·u·B), whose combine is
(a1, b1) ∘ (a2, b2) = (a1·a2, a2·b1 + b2), and adds C·h to the output. The launcher's tiles
are 16 bytes of input wide and one channel row per thread, so that scan runs in each thread's
registers, one position after another. Δ̂ (bias, softplus,
scale and threshold applied), Δ̂·u and the output stay in registers across the states.

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

import os

import triton
import triton.language as tl
from triton.language.extra import libdevice

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)
_LOG2E = tl.constexpr(LOG2E)


if os.environ.get("TRITON_INTERPRET") == "1":
    @triton.jit
    def _log2_approx(x):
        return tl.log2(x)
else:
    @triton.jit
    def _log2_approx(x):
        # lg2.approx.f32: one instruction of the special-function unit; absolute error about 2^-22.
        return libdevice.fast_log2f(x)


@triton.jit
def _scan_combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
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
        lp = tl.where(e < 0.125, series, LN2 * _log2_approx(1.0 + e))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _delta_hat(delta, delta_bias, delta_scale, delta_threshold, delta_softplus):
    """Δ̂ of a [BLOCK_D, BLOCK_T] tile: returns (Δ̂, delta + bias, the value before scaling). An
    absent threshold is −inf; NaN is kept (NaN <= thr is false)."""
    pre = delta + delta_bias[:, None]
    sp = pre
    if delta_softplus:
        sp = _softplus(pre)
    dt = sp * delta_scale[:, None]
    dt = tl.where(dt <= delta_threshold[:, None], 0.0, dt)
    return dt, pre, sp


@triton.jit
def _tile_columns(j0, j_hi, cols, rows, keep_row, stride_keep_k, MASK_T: tl.constexpr,
                  HAS_KEEP_IDX: tl.constexpr):
    """Visited indices j of a tile, their positions in the sequence, and the column masks. A
    full tile (MASK_T false) gets the always-true mask cols < BLOCK_T, which the compiler sees
    through, so its loads stay vectorized (a mask on j < j_hi would not); rows past `dim` read
    the last channel again and are not stored."""
    j = j0 + cols
    if MASK_T:
        col_ok = j < j_hi
    else:
        col_ok = cols < cols.shape[0]
    col_mask = (rows * 0 == 0)[:, None] & col_ok[None, :]
    if HAS_KEEP_IDX:
        pos = tl.load(keep_row + j.to(tl.int64) * stride_keep_k, mask=col_ok, other=0).to(tl.int32)
    else:
        pos = j
    return j, pos, col_ok, col_mask


@triton.jit
def _row_setup(pid, n_dblocks, dim, BLOCK_D: tl.constexpr):
    b = (pid // n_dblocks).to(tl.int64)
    d0 = (pid % n_dblocks) * BLOCK_D
    rows = d0 + tl.arange(0, BLOCK_D)
    row_ok = rows < dim
    in_rows64 = tl.minimum(rows, dim - 1).to(tl.int64)  # rows to read activations from
    return b, d0, rows, row_ok, rows.to(tl.int64), in_rows64


@triton.jit
def _bc_source(M_ptr, b, d0, rows64, dim_per_group, stride_b, stride_g, VARIABLE: tl.constexpr):
    """Base of a block's B or C: its group's (N, L) slab if variable, else its rows of (dim, N)."""
    if VARIABLE:
        src = M_ptr + b * stride_b + (d0 // dim_per_group).to(tl.int64) * stride_g
    else:
        src = M_ptr + rows64 * stride_g
    return src


@triton.jit
def _load_bc(src, n, stride_n, offs, row_ok, state_ok, col_mask, ACC: tl.constexpr,
             MASK_T: tl.constexpr, VARIABLE: tl.constexpr):
    """B or C of state n as a [BLOCK_D, BLOCK_T] tile (variable) or a [BLOCK_D, 1] column."""
    if VARIABLE:
        mask = col_mask & state_ok if MASK_T else state_ok
        M = tl.load(src + n * stride_n + offs, mask=mask, other=0.0).to(ACC)
    else:
        M = tl.load(src + n * stride_n, mask=row_ok & state_ok, other=0.0)[:, None]
    return M


@triton.jit
def _channel_params(rows, row_ok, delta_bias_ptr, delta_scale_ptr, delta_threshold_ptr,
                    has_delta_bias, has_delta_scale, has_threshold, delta_mult):
    """Per-channel Δ̂ parameters, absent ones at their neutral value."""
    delta_bias = tl.load(delta_bias_ptr + rows, mask=row_ok & (has_delta_bias != 0), other=0.0)
    delta_scale = delta_mult * tl.load(delta_scale_ptr + rows,
                                       mask=row_ok & (has_delta_scale != 0), other=1.0)
    delta_threshold = tl.load(delta_threshold_ptr + rows, mask=row_ok & (has_threshold != 0),
                              other=float("-inf"))
    return delta_bias, delta_scale, delta_threshold


@triton.jit
def _load_A(A_rows, stride_A_n, a_scale_rows, stride_as_n, has_a_scale, a_mult, n, row_ok):
    """A_eff[:, n]·log2(e) for the block's rows (0 for padding states n ≥ N)."""
    A_n = tl.load(A_rows + n * stride_A_n, mask=row_ok, other=0.0)
    A_n *= tl.load(a_scale_rows + n * stride_as_n, mask=row_ok & (has_a_scale != 0), other=1.0)
    return A_n * a_mult


@triton.jit
def _scan_states(
    n0, dstate, hs, As, dt, dtu, y, col_mask, row_ok, bc_offs_B, bc_offs_C, is_first, is_last,
    B_src, stride_B_n, C_src, stride_C_n,
    NG: tl.constexpr, MULTI_GROUP: tl.constexpr, MASK_T: tl.constexpr, B_VARIABLE: tl.constexpr,
    C_VARIABLE: tl.constexpr, STATE_ONLY: tl.constexpr,
):
    """Scans states n0 .. n0+NG-1 over one tile from carries `hs`; returns the carries at the
    tile's end and y plus Σ_n C_n·h_n. The carry enters through the first column's b
    (b_0 += a_0·h), so the scan's b component is the state itself."""
    new_hs = ()
    for i in tl.static_range(NG):
        n = n0 + i
        if MULTI_GROUP:
            state_ok = n < dstate  # false for the padding states of the last group
        else:
            state_ok = True  # a single group has exactly N states: no mask on the B/C loads
        B_n = _load_bc(B_src, n, stride_B_n, bc_offs_B, row_ok, state_ok, col_mask, dtu.dtype,
                       MASK_T, B_VARIABLE)
        b = dtu * B_n
        a = tl.exp2(dt * As[i][:, None])
        b = tl.where(is_first, a * hs[i][:, None] + b, b)
        _, h = tl.associative_scan((a, b), axis=1, combine_fn=_scan_combine)
        if not STATE_ONLY:
            y += h * _load_bc(C_src, n, stride_C_n, bc_offs_C, row_ok, state_ok, col_mask,
                              dtu.dtype, MASK_T, C_VARIABLE)
        # −0.0 is the exact identity of +, so the compiler drops the adds of non-last columns.
        new_hs = new_hs + (tl.sum(tl.where(is_last, h, -0.0), axis=1),)
    return new_hs, y


@triton.jit
def _store_states(dst_rows, n0, dstate, hs, row_ok, NG: tl.constexpr):
    for i in tl.static_range(NG):
        tl.store(dst_rows + n0 + i, hs[i], mask=row_ok & (n0 + i < dstate))


@triton.jit
def _load_states(src_rows, n0, dstate, row_ok, NG: tl.constexpr):
    hs = ()
    for i in tl.static_range(NG):
        hs = hs + (tl.load(src_rows + n0 + i, mask=row_ok & (n0 + i < dstate), other=0.0,
                           cache_modifier=".cg"),)
    return hs


@triton.jit
def _load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, has_a_scale, a_mult, n0, dstate,
             row_ok, NG: tl.constexpr):
    As = ()
    for i in tl.static_range(NG):
        As = As + (_load_A(A_rows, stride_A_n, a_scale_rows, stride_as_n, has_a_scale, a_mult,
                           n0 + i, row_ok & (n0 + i < dstate)),)
    return As


@triton.jit
def _start_states(n0, dstate, seg, dim, row_ok, h0_rows, stride_h0_n, has_h0, seg_rows,
                  seg_dsum_ptr, seg_states_ptr, A_rows, stride_A_n, a_scale_rows, stride_as_n,
                  has_a_scale, a_mult, NG: tl.constexpr, STATE_ONLY: tl.constexpr):
    """States n0 .. n0+NG-1 entering segment `seg`."""
    hs = ()
    for i in tl.static_range(NG):
        n = n0 + i
        ok = row_ok & (n < dstate)
        if STATE_ONLY:
            h = tl.zeros(row_ok.shape, A_rows.dtype.element_ty)
        else:
            h = tl.load(h0_rows + n * stride_h0_n, mask=ok & (has_h0 != 0), other=0.0)
            A_n = _load_A(A_rows, stride_A_n, a_scale_rows, stride_as_n, has_a_scale, a_mult, n, ok)
            for s in range(seg):
                dsum = tl.load(seg_dsum_ptr + seg_rows + s * dim, mask=ok, other=0.0)
                h_end = tl.load(seg_states_ptr + (seg_rows + s * dim) * dstate + n, mask=ok,
                                other=0.0)
                h = tl.exp2(A_n * dsum) * h + h_end
        hs = hs + (h,)
    return hs


@triton.jit
def _scan_tile(
    j0, j_hi, hs, As, rows, row_ok, cols,
    u_rows, delta_rows, z_rows, out_rows, keep_row,
    stride_u_l, stride_delta_l, stride_z_l, stride_out_l, stride_keep_k,
    A_rows, stride_A_n, a_scale_rows, stride_as_n, a_mult, has_a_scale,
    B_src, stride_B_n, stride_B_l, C_src, stride_C_n, stride_C_l,
    delta_bias, delta_scale, delta_threshold, D, delta_softplus,
    carry_src, carry_dst, chunk_rows, dstate, n_groups,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, NG: tl.constexpr, MULTI_GROUP: tl.constexpr,
    MASK_T: tl.constexpr, HAS_Z: tl.constexpr, HAS_KEEP_IDX: tl.constexpr, B_VARIABLE: tl.constexpr,
    C_VARIABLE: tl.constexpr, STATE_ONLY: tl.constexpr,
):
    """Scans positions [j0, j0 + BLOCK_T) (those < j_hi) for all states. Returns the register
    carries (unchanged when the states go through the scratch) and the tile's Δ̂."""
    ACC = D.dtype  # float32, or float64 for float64 inputs
    j, pos, col_ok, col_mask = _tile_columns(j0, j_hi, cols, rows, keep_row, stride_keep_k, MASK_T,
                                             HAS_KEEP_IDX)
    u = tl.load(u_rows + pos[None, :] * stride_u_l, mask=col_mask, other=0.0).to(ACC)
    dt = tl.load(delta_rows + pos[None, :] * stride_delta_l, mask=col_mask, other=0.0).to(ACC)
    dt, _, _ = _delta_hat(dt, delta_bias, delta_scale, delta_threshold, delta_softplus)
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
    is_chunk_start = (j0 % CHUNK) == 0
    ck_rows = chunk_rows + (j0 // CHUNK) * dstate
    if not MULTI_GROUP:
        if not STATE_ONLY:
            if is_chunk_start:
                _store_states(ck_rows, 0, dstate, hs, row_ok, NG)
        hs, y = _scan_states(0, dstate, hs, As, dt, dtu, y, col_mask, row_ok, bc_offs_B,
                             bc_offs_C, is_first, is_last, B_src, stride_B_n, C_src, stride_C_n,
                             NG, MULTI_GROUP, MASK_T, B_VARIABLE, C_VARIABLE, STATE_ONLY)
    else:
        for g in range(n_groups):
            n0 = g * NG
            hs_g = _load_states(carry_src, n0, dstate, row_ok, NG)
            if not STATE_ONLY:
                if is_chunk_start:
                    _store_states(ck_rows, n0, dstate, hs_g, row_ok, NG)
            As_g = _load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, has_a_scale, a_mult,
                            n0, dstate, row_ok, NG)
            hs_g, y = _scan_states(n0, dstate, hs_g, As_g, dt, dtu, y, col_mask, row_ok,
                                   bc_offs_B, bc_offs_C, is_first, is_last, B_src, stride_B_n, C_src, stride_C_n,
                                   NG, MULTI_GROUP, MASK_T, B_VARIABLE, C_VARIABLE, STATE_ONLY)
            _store_states(carry_dst, n0, dstate, hs_g, row_ok, NG)
        tl.debug_barrier()

    if not STATE_ONLY:
        if HAS_Z:
            z = tl.load(z_rows + pos[None, :] * stride_z_l, mask=col_mask, other=0.0).to(ACC)
            y *= z * tl.sigmoid(z)
        tl.store(out_rows + j[None, :] * stride_out_l, y.to(out_rows.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])
    return hs, dt


@triton.jit(do_not_specialize=["has_D", "has_delta_bias", "delta_softplus", "has_delta_scale",
                               "has_a_scale", "has_threshold", "has_h0", "n_dblocks", "n_segs",
                               "seg_tiles", "n_chunks", "n_groups"])
def selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, delta_bias_ptr, delta_scale_ptr,
    a_scale_ptr, delta_threshold_ptr, keep_idx_ptr, h0_ptr,
    out_ptr, last_state_ptr, chunk_states_ptr, seg_states_ptr, seg_dsum_ptr, carry_ptr,
    dim, dstate, nvisit, dim_per_group_B, dim_per_group_C, n_dblocks, n_segs, seg_tiles, n_chunks,
    n_groups, delta_mult, a_mult,
    has_D, has_delta_bias, delta_softplus, has_delta_scale, has_a_scale, has_threshold, has_h0,
    stride_u_b, stride_u_d, stride_u_l,
    stride_delta_b, stride_delta_d, stride_delta_l,
    stride_z_b, stride_z_d, stride_z_l,
    stride_out_b, stride_out_d, stride_out_l,
    stride_A_d, stride_A_n,
    stride_B_b, stride_B_g, stride_B_n, stride_B_l,
    stride_C_b, stride_C_g, stride_C_n, stride_C_l,
    stride_as_d, stride_as_n,
    stride_keep_b, stride_keep_k,
    stride_h0_b, stride_h0_d, stride_h0_n,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, NG: tl.constexpr,
    MULTI_GROUP: tl.constexpr, HAS_Z: tl.constexpr, HAS_KEEP_IDX: tl.constexpr,
    B_VARIABLE: tl.constexpr, C_VARIABLE: tl.constexpr, STATE_ONLY: tl.constexpr,
):
    """Grid (batch · n_dblocks, segments). With STATE_ONLY, writes each segment's end state from
    a zero start to seg_states (batch, n_segs, dim, N) and its ΣΔ̂ to seg_dsum (batch, n_segs,
    dim); otherwise writes out, chunk_states (batch, dim, n_chunks, N) and, from the last
    segment, last_state (batch, dim, N). n_groups = ⌈N / NG⌉; with MULTI_GROUP (n_groups > 1)
    the states are carried through `carry` (grid size · 2 slots · BLOCK_D · N float32)."""
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    b, d0, rows, row_ok, rows64, in_rows64 = _row_setup(pid, n_dblocks, dim, BLOCK_D)
    cols = tl.arange(0, BLOCK_T)

    u_rows = (u_ptr + b * stride_u_b + in_rows64 * stride_u_d)[:, None]
    delta_rows = (delta_ptr + b * stride_delta_b + in_rows64 * stride_delta_d)[:, None]
    z_rows = (z_ptr + b * stride_z_b + in_rows64 * stride_z_d)[:, None]
    out_rows = (out_ptr + b * stride_out_b + rows64 * stride_out_d)[:, None]
    keep_row = keep_idx_ptr + b * stride_keep_b
    A_rows = A_ptr + rows64 * stride_A_d
    a_scale_rows = a_scale_ptr + rows64 * stride_as_d
    # Every block of BLOCK_D channels lies in one group of B and of C (the launcher picks
    # BLOCK_D so).
    B_src = _bc_source(B_ptr, b, d0, rows64, dim_per_group_B, stride_B_b, stride_B_g, B_VARIABLE)
    C_src = _bc_source(C_ptr, b, d0, rows64, dim_per_group_C, stride_C_b, stride_C_g, C_VARIABLE)
    delta_bias, delta_scale, delta_threshold = _channel_params(
        rows, row_ok, delta_bias_ptr, delta_scale_ptr, delta_threshold_ptr, has_delta_bias,
        has_delta_scale, has_threshold, delta_mult)
    D = tl.load(D_ptr + rows, mask=row_ok & (has_D != 0), other=0.0)

    chunk_rows = chunk_states_ptr + (b * dim + rows64) * n_chunks * dstate
    carry = carry_ptr + (pid * n_segs + seg).to(tl.int64) * (2 * BLOCK_D) * dstate
    carry_rows = carry + tl.arange(0, BLOCK_D) * dstate
    slot = BLOCK_D * dstate
    seg_rows = (b * n_segs) * dim + rows64  # row of segment 0 in seg_states / seg_dsum
    h0_rows = h0_ptr + b * stride_h0_b + rows64 * stride_h0_d

    # Start state of this segment: the initial state folded through every earlier segment
    # (zero for the state-only pass).
    if MULTI_GROUP:
        for g in range(n_groups):
            hs_g = _start_states(g * NG, dstate, seg, dim, row_ok, h0_rows, stride_h0_n, has_h0,
                                 seg_rows, seg_dsum_ptr, seg_states_ptr, A_rows, stride_A_n,
                                 a_scale_rows, stride_as_n, has_a_scale, a_mult, NG, STATE_ONLY)
            _store_states(carry_rows, g * NG, dstate, hs_g, row_ok, NG)
        tl.debug_barrier()
        hs = ()  # unused: the carries live in the scratch
        As = ()
    else:
        hs = _start_states(0, dstate, seg, dim, row_ok, h0_rows, stride_h0_n, has_h0, seg_rows,
                           seg_dsum_ptr, seg_states_ptr, A_rows, stride_A_n, a_scale_rows,
                           stride_as_n, has_a_scale, a_mult, NG, STATE_ONLY)
        As = _load_As(A_rows, stride_A_n, a_scale_rows, stride_as_n, has_a_scale, a_mult, 0,
                      dstate, row_ok, NG)

    # In tiles, so that the compiler sees every tile start aligned for vector loads.
    j_lo = seg * seg_tiles * BLOCK_T
    j_hi = tl.minimum(j_lo + seg_tiles * BLOCK_T, nvisit)
    n_full = (j_hi - j_lo) // BLOCK_T
    dsum = tl.zeros([BLOCK_D, BLOCK_T], A_ptr.dtype.element_ty)
    for k in range(n_full):
        hs, dt = _scan_tile(
            j_lo + k * BLOCK_T, j_hi, hs, As, rows, row_ok, cols,
            u_rows, delta_rows, z_rows, out_rows, keep_row,
            stride_u_l, stride_delta_l, stride_z_l, stride_out_l, stride_keep_k,
            A_rows, stride_A_n, a_scale_rows, stride_as_n, a_mult, has_a_scale,
            B_src, stride_B_n, stride_B_l, C_src, stride_C_n, stride_C_l,
            delta_bias, delta_scale, delta_threshold, D, delta_softplus,
            carry_rows + (k % 2) * slot, carry_rows + ((k + 1) % 2) * slot, chunk_rows, dstate,
            n_groups, CHUNK, BLOCK_T, NG, MULTI_GROUP, False, HAS_Z, HAS_KEEP_IDX, B_VARIABLE, C_VARIABLE,
            STATE_ONLY)
        if STATE_ONLY:
            dsum += dt
    n_tiles = n_full
    if j_lo + n_full * BLOCK_T < j_hi:
        hs, dt = _scan_tile(
            j_lo + n_full * BLOCK_T, j_hi, hs, As, rows, row_ok, cols,
            u_rows, delta_rows, z_rows, out_rows, keep_row,
            stride_u_l, stride_delta_l, stride_z_l, stride_out_l, stride_keep_k,
            A_rows, stride_A_n, a_scale_rows, stride_as_n, a_mult, has_a_scale,
            B_src, stride_B_n, stride_B_l, C_src, stride_C_n, stride_C_l,
            delta_bias, delta_scale, delta_threshold, D, delta_softplus,
            carry_rows + (n_full % 2) * slot, carry_rows + ((n_full + 1) % 2) * slot, chunk_rows,
            dstate, n_groups, CHUNK, BLOCK_T, NG, MULTI_GROUP, True, HAS_Z, HAS_KEEP_IDX, B_VARIABLE,
            C_VARIABLE, STATE_ONLY)
        if STATE_ONLY:
            dsum += dt
        n_tiles += 1

    if STATE_ONLY:
        tl.store(seg_dsum_ptr + seg_rows + seg * dim, tl.sum(dsum, axis=1), mask=row_ok)
        dst_rows = seg_states_ptr + (seg_rows + seg * dim) * dstate
    else:
        dst_rows = last_state_ptr + (b * dim + rows64) * dstate
    if STATE_ONLY or seg == n_segs - 1:
        if not MULTI_GROUP:
            _store_states(dst_rows, 0, dstate, hs, row_ok, NG)
        else:
            for g in range(n_groups):
                hs_g = _load_states(carry_rows + (n_tiles % 2) * slot, g * NG, dstate, row_ok, NG)
                _store_states(dst_rows, g * NG, dstate, hs_g, row_ok, NG)
