"""warp_sums (fusedscan/utils/warp_sums.py) against torch's sums over rows: every count of tiles
and columns, odd counts included, one to four warps, rows of one, two or four lanes, all lane
bits at once or the first one per pair of tiles (as the backward's main kernel calls it). Each
tile is loaded as the kernels load theirs, 16 bytes per lane from rows far apart, which puts a
row on `lanes` threads: the layout in which the exchanges are warp shuffles (in another one
they are right, and slower)."""

import pytest
import torch
import triton
import triton.language as tl

from fusedscan.utils.warp_sums import lane_labels, warp_rows, warp_sums, warps_total
from tests.conftest import DEVICE


@triton.jit
def _sums_kernel(x_ptr, out_ptr, K: tl.constexpr, ROWS: tl.constexpr, T: tl.constexpr,
                 STAGED: tl.constexpr, WARP_ROWS: tl.constexpr):
    """out[q·T + c] = Σ_r x[q, r, c] for each of the K tiles of x (K, ROWS, 2·T), whose second
    half of every row is padding. STAGED: tiles 2i and 2i + 1 paired on their own first."""
    offs = tl.arange(0, ROWS)[:, None] * (2 * T) + tl.arange(0, T)[None, :]
    tiles = ()
    for q in tl.static_range(K):
        tiles = tiles + (tl.load(x_ptr + q * ROWS * 2 * T + offs).to(tl.float32),)
    if STAGED:
        pairs = ()
        for i in tl.static_range(K // 2):
            pairs = pairs + warp_sums((tiles[2 * i], tiles[2 * i + 1]), 0, 1, WARP_ROWS)
        shares = warp_sums(pairs, 1, WARP_ROWS=WARP_ROWS)
    else:
        shares = warp_sums(tiles, WARP_ROWS=WARP_ROWS)
    labs, dup = lane_labels(K, T, WARP_ROWS, WARP_ROWS)
    for e in tl.static_range(len(shares)):
        total = warps_total(shares[e], ROWS, WARP_ROWS)
        tl.store(out_ptr + labs[e], total, mask=(labs[e] >= 0) & (dup == 0))


# (lanes per row, columns): each lane loads 16 bytes, a row 16 · lanes (one column at most 4).
LAYOUTS = [(1, 1), (1, 2), (1, 4), (1, 8), (1, 16), (2, 4), (2, 8), (2, 16), (4, 8), (4, 16)]
DTYPES = {1: torch.uint8, 2: torch.bfloat16, 4: torch.float32, 8: torch.float64}


@pytest.mark.parametrize("warps", [1, 2, 4])
@pytest.mark.parametrize("lanes,T", LAYOUTS)
@pytest.mark.parametrize("K,staged", [(1, False), (2, False), (3, False), (4, False),
                                      (5, False), (8, False), (16, False), (2, True),
                                      (4, True), (6, True), (16, True)])
def test_warp_sums(K, staged, lanes, T, warps):
    rows = 32 // lanes * warps
    dtype = DTYPES.get(16 * lanes // T, torch.float32)
    assert warp_rows(rows, T, dtype.itemsize, warps) == 32 // lanes
    x = torch.randn(K, rows, 2 * T, device=DEVICE)
    x = (x * 30 + 100).to(dtype) if dtype == torch.uint8 else x.to(dtype)
    out = torch.full((K * T,), float("nan"), device=DEVICE)
    _sums_kernel[(1,)](x, out, K=K, ROWS=rows, T=T, STAGED=staged, WARP_ROWS=32 // lanes,
                       num_warps=warps)
    ref = x[..., :T].double().sum(1).flatten()
    assert not out.isnan().any(), "a sum was not written"
    # A float32 sum of `rows` terms in another order: its error is bounded by the sum of the
    # terms' magnitudes (a sum that cancels to near zero has a large error relative to itself).
    magnitude = x[..., :T].double().abs().sum(1).flatten()
    assert ((out.double() - ref).abs() <= 1e-6 * magnitude).all(), (out, ref)
