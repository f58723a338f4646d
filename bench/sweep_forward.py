"""Launch-configuration sweep on the GPU: times selective_scan_fwd for each (channels per
program, warps, register cap, programs per SM) and selective_scan_bwd for each configuration
of its main kernel (channels per program, positions per tile, warps, states per unrolled
group, register cap), at shapes of the benchmark grid, next to mamba-ssm's forward and
backward (its forward+backward less its forward) when it is built, and writes a CSV. Timing: triton.testing.do_bench (CUDA events), median, after
warm-up, rotating over three input sets so that no run reads inputs left in L2 by the previous
one. The kernels of every configuration are compiled first, in parallel processes.

usage: python bench/sweep_forward.py OUT.csv [--full] [--jobs N] [--shapes BxDxL ...]
       [--dtypes ...] [--forward-only] [--tiles] [--only REGEX]
"""

import argparse
import concurrent.futures
import csv
import itertools
import multiprocessing
import os
import re
import sys

import torch
import triton
import triton.testing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusedscan.selective_scan.chunk import CHUNK_SIZE, selective_scan_fwd  # noqa: E402
from fusedscan.selective_scan.chunk_backward import selective_scan_bwd  # noqa: E402
from fusedscan.selective_scan.options import BCLayout, ScanOptions  # noqa: E402
import mamba_ssm_cuda  # noqa: E402
from scan_cases import SHAPES, make_inputs  # noqa: E402

QUICK_SHAPES = [(8, 1536, 2048), (1, 1536, 8192), (1, 1536, 32768)]
DTYPES = [torch.bfloat16, torch.float32]
# (BLOCK_D, num_warps, maxnreg (0: none)): 32 · warps channels is one channel row per thread.
FWD_CONFIGS = [(128, 4, 0), (128, 4, 128), (64, 2, 0), (64, 2, 128), (32, 1, 0)]
PROGRAMS_PER_SM = [1, 2, 4, 8]
# (BLOCK_D, BLOCK_T, num_warps) with the positions of a tile across threads (--tiles): the
# tile's scan crosses threads, so that short sequences need fewer segments or none. One to four
# channels per program, 8 or 16 positions per thread (mamba-ssm's blocks: one channel, up to
# 2048 positions), each at TILE_SEGMENTS segments; a tile longer than the sequence is skipped.
# Tiles of 16-64 positions were measured on 2026-11-29
# (docs/data/sweep_tiles_h200_2026-11-29.csv): not competitive.
TILE_CONFIGS = [(1, 128, 1), (1, 256, 1), (1, 512, 1), (1, 512, 2), (1, 1024, 4), (1, 2048, 8),
                (2, 256, 2), (4, 256, 4)]
TILE_SEGMENTS = [1, 2, 4, 8]
# Positions per thread of one-tile launches (--tiles; sequences of one chunk or less: the whole
# sequence in one tile of one channel, the states in a loop).
ONE_TILE_PER_THREAD = [4, 8, 16, 32]
# (channels, positions per tile, num_warps, states per unrolled group, maxnreg (0: none)) of
# the main backward kernel; 32 · warps channels is one channel row per thread.
BWD_CONFIGS = [(128, 8, 4, 4, 0), (128, 8, 4, 2, 0), (128, 8, 4, 1, 0), (128, 4, 4, 4, 0),
               (128, 8, 4, 4, 128), (128, 8, 4, 8, 0), (64, 8, 2, 4, 0), (32, 8, 1, 4, 0)]
TILES = False
ONLY = None  # a regular expression the labels of the configurations must match


def inputs(batch, dim, L, dtype):
    return make_inputs((batch, dim, L), dtype)


def _options(s):
    return ScanOptions(s["D"], s["z"], s["delta_bias"], True)


def fwd_cases(batch, dim, L, sms, size):
    """(label, selective_scan_fwd keywords) of every configuration at this shape and element
    size of the inputs (bytes)."""
    row_t = 16 // size  # one channel row per thread: 16 bytes of positions
    cases = [("fwd auto", {}), ("fwd d128 w4 s1", dict(block_t=row_t, num_segments=1))]
    for (block_d, warps, maxnreg), per_sm in itertools.product(FWD_CONFIGS, PROGRAMS_PER_SM):
        segs = triton.cdiv(per_sm * sms, batch * triton.cdiv(dim, block_d))
        cases.append((f"fwd d{block_d} w{warps} r{maxnreg or '-'} p{per_sm}",
                      dict(block_d=block_d, block_t=row_t, num_warps=warps, maxnreg=maxnreg,
                           num_segments=segs)))
    block_t = triton.next_power_of_2(L)
    for per_thread in ONE_TILE_PER_THREAD if TILES and L <= CHUNK_SIZE else ():
        warps = block_t // (32 * per_thread)
        if 1 <= warps <= 16:
            cases.append((f"fwd one tile p{per_thread} w{warps}",
                          dict(block_d=1, block_t=block_t, num_warps=warps, num_segments=1)))
    for block_d, block_t, warps in TILE_CONFIGS if TILES else ():
        for segs in TILE_SEGMENTS:
            if segs * block_t <= L:
                cases.append((f"fwd d{block_d} t{block_t} w{warps} s{segs}",
                              dict(block_d=block_d, block_t=block_t, num_warps=warps, maxnreg=0,
                                   num_segments=segs)))
    return [c for c in cases if ONLY is None or re.search(ONLY, c[0])]


def bwd_cases():
    cases = [(f"bwd d{d} t{t} w{w} g{g} r{r or '-'}",
              dict(block_d=d, tile=t, num_warps=w, group=g, maxnreg=r or None))
             for d, t, w, g, r in BWD_CONFIGS]
    return [c for c in cases if ONLY is None or re.search(ONLY, c[0])]


def run_fwd(s, cfg):
    return selective_scan_fwd(s["u"], s["delta"], s["A"], s["B"], s["C"], _options(s), **cfg)


def run_bwd(s, cfg, saved):
    out, chunk_states, dout = saved
    return selective_scan_bwd(dout, None, s["u"], s["delta"], s["A"], s["B"], s["C"], _options(s),
                              BCLayout(), chunk_states, **cfg)


def compile_one(job):
    """Runs one configuration once at one shape (so that its kernels land in the cache)."""
    kind, dtype, shape, cfg = job
    s = inputs(*shape, getattr(torch, dtype))
    if kind == "fwd":
        run_fwd(s, cfg)
    else:
        out, _, chunk_states = run_fwd(s, {})
        run_bwd(s, cfg, (out, chunk_states, torch.randn_like(out)))
    torch.cuda.synchronize()
    return job


def bench(fn, sets):
    i = [0]

    def run():
        i[0] = (i[0] + 1) % len(sets)
        fn(sets[i[0]])

    return triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--full", action="store_true", help="all shapes of the grid")
    parser.add_argument("--jobs", type=int, default=8, help="parallel compile processes")
    parser.add_argument("--shapes", nargs="+", metavar="BxDxL",
                        help="these batch×dim×L shapes instead (e.g. 1x1536x512)")
    parser.add_argument("--dtypes", nargs="+", choices=["bfloat16", "float32"],
                        default=["bfloat16", "float32"])
    parser.add_argument("--forward-only", action="store_true", help="no backward configurations")
    parser.add_argument("--tiles", action="store_true",
                        help="also forward tiles with several threads along the positions")
    parser.add_argument("--only", metavar="REGEX",
                        help="only the configurations whose label matches (e.g. 'auto|one tile')")
    args = parser.parse_args()
    global TILES, ONLY
    TILES, ONLY = args.tiles, args.only
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = SHAPES if args.full else QUICK_SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    DTYPES[:] = [getattr(torch, d) for d in args.dtypes]
    if args.forward_only:
        BWD_CONFIGS.clear()

    # One job per distinct compiled variant: the launch configuration and dtype (the shapes of
    # the grid all specialise alike, but for the tile length of the automatic and one-tile
    # configurations).
    jobs = {}
    for dtype, shape in itertools.product(DTYPES, shapes):
        name = str(dtype).replace("torch.", "")
        one_tile = shape[2] <= CHUNK_SIZE and triton.next_power_of_2(shape[2])
        for label, cfg in fwd_cases(*shape, sms, dtype.itemsize):
            # Segments add the state-only pass: one job with them and one without.
            stem = label if "one tile" in label else label.rsplit(" p", 1)[0].rsplit(" s", 1)[0]
            jobs.setdefault(("fwd", name, stem, cfg.get("num_segments", 2) > 1, one_tile),
                            ("fwd", name, shape, cfg))
        for label, cfg in bwd_cases():
            jobs.setdefault(("bwd", name, label), ("bwd", name, shape, cfg))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        for done in pool.map(compile_one, jobs.values()):
            print("compiled", done[0], done[1], done[3], flush=True)

    mamba_fn = None
    try:
        mamba_fn = mamba_ssm_cuda.load()
    except mamba_ssm_cuda.Unavailable as e:
        print(f"mamba-ssm not timed: {e}")
    rows = []
    for dtype, (batch, dim, L) in itertools.product(DTYPES, shapes):
        sets = [inputs(batch, dim, L, dtype) for _ in range(3)]
        timings = []
        for label, cfg in fwd_cases(batch, dim, L, sms, dtype.itemsize):
            timings.append((label, bench(lambda s: run_fwd(s, cfg), sets)))
        saved = {}
        for k, s in enumerate(sets):
            out, _, chunk_states = run_fwd(s, {})
            saved[id(s)] = (out, chunk_states, torch.randn_like(out))
        for label, cfg in bwd_cases():
            timings.append((label, bench(lambda s: run_bwd(s, cfg, saved[id(s)]), sets)))
        del saved
        if mamba_fn is not None:
            def mamba(s):
                return mamba_fn(s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"], s["z"],
                                s["delta_bias"], True)

            fwd_ms = bench(mamba, sets)
            timings.append(("fwd mamba-ssm", fwd_ms))
            if BWD_CONFIGS:
                leaves = [{k: v.detach().requires_grad_(v.is_floating_point())
                           if torch.is_tensor(v) else v for k, v in s.items()} for s in sets]
                grads = [torch.randn_like(mamba(s)) for s in sets]

                def fwd_bwd(s):
                    k = next(i for i, x in enumerate(leaves) if x is s)
                    mamba(s).backward(grads[k])

                timings.append(("bwd mamba-ssm (fwd+bwd - fwd)", bench(fwd_bwd, leaves) - fwd_ms))
                del leaves, grads
        for label, ms in timings:
            row = dict(dtype=str(dtype).replace("torch.", ""), batch=batch, dim=dim, L=L,
                       config=label, ms=round(ms, 4),
                       gupdates_per_s=round(batch * dim * L * 16 / ms / 1e6, 1))
            rows.append(row)
            print(row, flush=True)
        del sets
        torch.cuda.empty_cache()
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\nbest per shape (ms):")
    for key, group in itertools.groupby(rows, key=lambda r: (r["dtype"], r["batch"], r["dim"], r["L"])):
        group = list(group)
        for kind in ("fwd", "bwd"):
            mine = [r for r in group if r["config"].startswith(kind) and "mamba" not in r["config"]]
            if not mine:
                continue
            best = min(mine, key=lambda r: r["ms"])
            first = mine[0]
            print(f"{key} {kind}: best {best['ms']} ({best['config']}), {first['config']} "
                  f"{first['ms']}")
        for r in group:
            if "mamba" in r["config"]:
                print(f"{key} {r['config']} {r['ms']}")


if __name__ == "__main__":
    main()
