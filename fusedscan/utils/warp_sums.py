"""Sums over a block's rows of several [ROWS, T] tiles at once, the rows taken as warps of 32
lanes (row r is lane r % 32 of warp r // 32). Fast when that is the layout: one row per thread,
all T columns in its registers, as the backward's main kernel holds its tiles; right in any.

tl.sum(tile, axis=0) exchanges every column across all five lane bits: 5·T shuffles per tile.
Summing K tiles together instead halves what each lane holds at every lane bit (a lane keeps one
half, adds the partner lane's copy of it, and hands the partner the other half): the first bits
pair whole tiles, the next ones halves of the columns, until every lane holds its own share of
the K·T sums. That is K·T − 1 shuffles in all rather than 5·K·T, then one exchange between
warps. Each value carries a label, q·T + column for tile q, so that the caller knows which sum a
lane ends up with; the labels depend on the lane only, and `lane_labels` works them out for the
32 lanes in the same order. The partner's values come from a gather along the rows, which
Triton lowers to shuffles when the rows are a warp's lanes (never inline shuffles: the layout
is the compiler's choice, and with loads it cannot vectorize it puts positions across lanes)."""

import triton
import triton.language as tl

LANE_BITS = tl.constexpr(5)  # 32 lanes per warp


@triton.jit
def _rows_xor(x, MASK: tl.constexpr):
    """x with row r replaced by row r ^ MASK (MASK < 32), within each block of 32 rows: a gather
    that Triton turns into one shuffle per value when the 32 rows are a warp's lanes, and that
    stays right (through shared memory) in any other layout."""
    y = tl.reshape(x, [x.shape[0] // 32, 32, x.shape[1]])
    partner = (tl.arange(0, 32) ^ MASK)[None, :, None] + tl.zeros(y.shape, tl.int32)
    return tl.reshape(tl.gather(y, partner, 1), x.shape)


@triton.jit
def _keep_half(lo, hi, upper, MASK: tl.constexpr, SHUFFLE: tl.constexpr):
    """Lanes with the bit MASK set keep `hi`, the others `lo`; with SHUFFLE each adds the
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
def _lane_bit_sums(vals, labs, lane, MASK: tl.constexpr, SHUFFLE: tl.constexpr):
    """One lane bit of warp_sums: (vals, labs, duplicated) after summing over lanes MASK apart.
    `duplicated` is true where the two lanes now hold the same sum (nothing was left to split)."""
    upper = ((lane & MASK) != 0)[:, None]
    if len(vals) > 1:
        new_vals = ()
        new_labs = ()
        for i in tl.static_range(len(vals) // 2):
            new_vals = new_vals + (_keep_half(vals[2 * i], vals[2 * i + 1], upper, MASK, SHUFFLE),)
            new_labs = new_labs + (tl.where(upper, labs[2 * i + 1], labs[2 * i]),)
        return new_vals, new_labs, upper & False
    elif vals[0].shape[1] > 1:
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
def _lane_sums(vals, labs, lane, FIRST: tl.constexpr, LAST: tl.constexpr,
               SHUFFLE: tl.constexpr):
    """Lane bits FIRST .. LAST − 1 (the bit 16 >> level at each level) of warp_sums; without
    SHUFFLE only the labels and the duplicate flags."""
    dup = (lane < 0)[:, None]
    for level in tl.static_range(FIRST, LAST):
        vals, labs = _even_count(vals, labs)
        vals, labs, d = _lane_bit_sums(vals, labs, lane, 16 >> level, SHUFFLE)
        dup = dup | d
    return vals, labs, dup


@triton.jit
def warp_sums(tiles, FIRST: tl.constexpr = 0, LAST: tl.constexpr = LANE_BITS):
    """Sums over each warp's 32 rows of the float32 [ROWS, T] tiles (a tuple of K): a tuple of
    [ROWS, t] tiles, each lane's share of the sums (K·T / 32 values per lane, at least one), in
    the order `lane_labels` gives for the same K and T. The same steps run in Triton's
    interpreter.

    The lane bits go one at a time, the first pairing tiles 2i and 2i + 1: FIRST and LAST
    (0 ≤ FIRST ≤ LAST ≤ 5) run only those levels, so that a caller can pair tiles as soon as it
    has them (warp_sums(warp_sums((a, b), 0, 1) + warp_sums((c, d), 0, 1), 1) is
    warp_sums((a, b, c, d))) and keep fewer values live."""
    rows = tl.arange(0, tiles[0].shape[0])
    labs = ()
    for q in tl.static_range(len(tiles)):
        labs = labs + ((rows * 0)[:, None] + q * tiles[0].shape[1]
                       + tl.arange(0, tiles[0].shape[1])[None, :],)
    vals, _, _ = _lane_sums(tiles, labs, rows % 32, FIRST, LAST, True)
    return vals


@triton.jit
def lane_labels(K: tl.constexpr, T: tl.constexpr, ROWS: tl.constexpr = 32):
    """For warp_sums of K tiles of T columns: per tile it returns, the [ROWS, t] labels q·T +
    column of the sums each row's lane holds (−1 for none), and [ROWS, 1] true where a lane
    holds copies of sums that a lower lane holds too."""
    lane = tl.arange(0, ROWS) % 32
    labs = ()
    for q in tl.static_range(K):
        labs = labs + ((lane * 0)[:, None] + q * T + tl.arange(0, T)[None, :],)
    _, labs, dup = _lane_sums(labs, labs, lane, 0, LANE_BITS, False)
    return labs, dup


@triton.jit
def warps_total(x, ROWS: tl.constexpr):
    """[32, t]: the sum over a block's warps of each lane's [ROWS, t] share from warp_sums."""
    return tl.sum(tl.reshape(x, [ROWS // 32, 32, x.shape[1]]), axis=0)
