"""Sums over a block's rows of several [ROWS, T] tiles at once, the rows taken in blocks of
WARP_ROWS (32, 16, ..), each block one warp: row r is in block r // WARP_ROWS, on lane
r % WARP_ROWS, or with 32 // WARP_ROWS lanes per row on those lanes, each with its share of the
columns. Fast when that is the layout (as the backward's main kernel holds its tiles: one row
per thread with T columns in its registers, or two threads per row with T / 2 each); right in
any.

tl.sum(tile, axis=0) exchanges every column across all five lane bits: 5·T shuffles per tile.
Summing K tiles together instead halves what each lane holds at every lane bit (a lane keeps one
half, adds the partner lane's copy of it, and hands the partner the other half): the first bits
pair whole tiles, the next ones halves of the columns, until every lane holds its own share of
the K·T sums. That is K·T − 1 shuffles in all rather than 5·K·T, then one exchange between
warps. When a row spans several lanes, only the lane bits of the row are summed over, and the
columns are halved only down to one per lane. Each value carries a label, q·T + column for tile
q, so that the caller knows which sum a lane ends up with; the labels depend on the lane only,
and `lane_labels` works them out for the lanes in the same order. The partner's values come
from a flip along the rows, which Triton lowers to shuffles when the rows are a warp's lanes
(never inline shuffles: the layout is the compiler's choice, and with loads it cannot vectorize
it puts positions across lanes)."""

import triton
import triton.language as tl

LANE_BITS = tl.constexpr(5)  # 32 lanes per warp


def warp_rows(rows, cols, elem_bytes, num_warps):
    """The WARP_ROWS of a [rows, cols] tile loaded from rows far apart by num_warps warps, as
    Triton lays it out (each thread takes up to 16 bytes of a row, and no more columns than an
    even share of the tile's elements; threads go along the columns first, then rows): the rows
    per warp, or 0 when the tile's rows are not whole warps."""
    per_thread = max(1, min(16 // elem_bytes, cols, rows * cols // (32 * num_warps)))
    lanes_per_row = cols // per_thread
    if lanes_per_row == 0 or 32 % lanes_per_row:
        return 0
    per_warp = 32 // lanes_per_row
    return per_warp if rows % (per_warp * num_warps) == 0 else 0


@triton.jit
def _rows_xor(x, MASK: tl.constexpr):
    """x with row r replaced by row r ^ MASK: a flip of the row bit MASK, which Triton lowers to
    one shuffle per value when that bit is a lane bit, in the tile's own layout (a gather takes
    a layout of its own choosing, with the rows on the lowest lane bits, and converts to it
    through shared memory when a row spans several lanes)."""
    y = tl.reshape(x, [x.shape[0] // (2 * MASK), 2, MASK, x.shape[1]])
    return tl.reshape(tl.flip(y, 1), x.shape)


@triton.jit
def _keep_half(lo, hi, upper, MASK: tl.constexpr, SHUFFLE: tl.constexpr):
    """Lanes with the row bit MASK set keep `hi`, the others `lo`; with SHUFFLE each adds the
    partner lane's copy of what it keeps (the partner sends the half it does not keep)."""
    keep = tl.where(upper, hi, lo)
    if SHUFFLE:
        keep += _rows_xor(tl.where(upper, lo, hi), MASK)
    return keep


@triton.jit
def _halves(x):
    """The even and the odd columns of a [ROWS, T] tile."""
    return tl.split(tl.reshape(x, [x.shape[0], x.shape[1] // 2, 2]))


@triton.jit
def _lane_bit_sums(vals, labs, row, MASK: tl.constexpr, WARP_ROWS: tl.constexpr,
                   SHUFFLE: tl.constexpr):
    """One row bit of warp_sums: (vals, labs, duplicated) after summing over rows MASK apart.
    `duplicated` is true where the two lanes now hold the same sum (nothing was left to split:
    one tile, with one column per lane of a row)."""
    upper = ((row & MASK) != 0)[:, None]
    if len(vals) > 1:
        new_vals = ()
        new_labs = ()
        for i in tl.static_range(len(vals) // 2):
            new_vals = new_vals + (_keep_half(vals[2 * i], vals[2 * i + 1], upper, MASK, SHUFFLE),)
            new_labs = new_labs + (tl.where(upper, labs[2 * i + 1], labs[2 * i]),)
        return new_vals, new_labs, upper & False
    elif vals[0].shape[1] > 32 // WARP_ROWS:
        v_even, v_odd = _halves(vals[0])
        l_even, l_odd = _halves(labs[0])
        return ((_keep_half(v_even, v_odd, upper, MASK, SHUFFLE),),
                (tl.where(upper, l_odd, l_even),), upper & False)
    else:
        v = vals[0]
        if SHUFFLE:
            v += _rows_xor(v, MASK)
        return (v,), labs, upper


@triton.jit
def _even_count(vals, labs):
    """vals, labs with a zero tile labelled −1 appended when there is an odd number (> 1)."""
    if len(vals) > 1 and len(vals) % 2 == 1:
        vals = vals + (tl.zeros(vals[0].shape, vals[0].dtype),)
        labs = labs + (tl.full(labs[0].shape, -1, tl.int32),)
    return vals, labs


@triton.jit
def _lane_sums(vals, labs, row, FIRST: tl.constexpr, LAST: tl.constexpr,
               WARP_ROWS: tl.constexpr, SHUFFLE: tl.constexpr):
    """Levels FIRST .. LAST − 1 of warp_sums, the row bit WARP_ROWS >> (level + 1) at each (none
    once that is 0); without SHUFFLE only the labels and the duplicate flags."""
    dup = (row < 0)[:, None]
    for level in tl.static_range(FIRST, LAST):
        if (WARP_ROWS >> (level + 1)) > 0:
            vals, labs = _even_count(vals, labs)
            vals, labs, d = _lane_bit_sums(vals, labs, row, WARP_ROWS >> (level + 1), WARP_ROWS,
                                           SHUFFLE)
            dup = dup | d
    return vals, labs, dup


@triton.jit
def _tile_labels(K: tl.constexpr, T: tl.constexpr, row):
    """q·T + column for each of K [len(row), T] tiles."""
    labs = ()
    for q in tl.static_range(K):
        labs = labs + ((row * 0)[:, None] + q * T + tl.arange(0, T)[None, :],)
    return labs


@triton.jit
def warp_sums(tiles, FIRST: tl.constexpr = 0, LAST: tl.constexpr = LANE_BITS,
              WARP_ROWS: tl.constexpr = 32):
    """Sums over each block of WARP_ROWS rows (a warp's) of the float32 [ROWS, T] tiles (a tuple
    of K): a tuple of [ROWS, t] tiles, each lane's share of the sums (K·T / 32 values per lane,
    at least one), in the order `lane_labels` gives for the same K, T and WARP_ROWS. The same
    steps run in Triton's interpreter.

    The row bits go one at a time, the first pairing tiles 2i and 2i + 1: FIRST and LAST
    (0 ≤ FIRST ≤ LAST ≤ 5) run only those levels, so that a caller can pair tiles as soon as it
    has them (warp_sums(warp_sums((a, b), 0, 1) + warp_sums((c, d), 0, 1), 1) is
    warp_sums((a, b, c, d))) and keep fewer values live."""
    row = tl.arange(0, tiles[0].shape[0]) % WARP_ROWS
    labs = _tile_labels(len(tiles), tiles[0].shape[1], row)
    vals, _, _ = _lane_sums(tiles, labs, row, FIRST, LAST, WARP_ROWS, True)
    return vals


@triton.jit
def lane_labels(K: tl.constexpr, T: tl.constexpr, ROWS: tl.constexpr = 32,
                WARP_ROWS: tl.constexpr = 32):
    """For warp_sums of K tiles of T columns: per tile it returns, the [ROWS, t] labels q·T +
    column of the sums each row's lanes hold (−1 for none), and [ROWS, 1] true where a lane
    holds copies of sums that the lane of a lower row holds too."""
    row = tl.arange(0, ROWS) % WARP_ROWS
    labs = _tile_labels(K, T, row)
    _, labs, dup = _lane_sums(labs, labs, row, 0, LANE_BITS, WARP_ROWS, False)
    return labs, dup


@triton.jit
def warps_total(x, ROWS: tl.constexpr, WARP_ROWS: tl.constexpr = 32):
    """[WARP_ROWS, t]: the sum over a block's warps of each lane's [ROWS, t] share from
    warp_sums."""
    return tl.sum(tl.reshape(x, [ROWS // WARP_ROWS, WARP_ROWS, x.shape[1]]), axis=0)
