"""Where the backward pass's time goes, on the GPU: for each shape and launch configuration of
selective_scan_bwd, its time (triton.testing.do_bench median over three input sets in turn),
the peak memory it allocates, and the CUDA time of each kernel it launches (torch.profiler,
mean of 10 calls).

    python bench/backward_kernels.py [--shapes BxDxL ...] [--dtypes ...] [--csv PATH]
        [--configs "dict(range_length=2048)" ...]

Each configuration is a Python dict of selective_scan_bwd's launch keywords ("dict()" is the
automatic one). N = 16 with delta_softplus, D, z and delta_bias on. To time a modified copy of
the package against the committed one, run this script twice with PYTHONPATH set to each.
"""

import argparse
import collections
import os
import sys

import torch
import triton.testing
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fusedscan.selective_scan.chunk import selective_scan_fwd  # noqa: E402
from fusedscan.selective_scan.chunk_backward import selective_scan_bwd  # noqa: E402
from fusedscan.selective_scan.options import BCLayout, ScanOptions  # noqa: E402
from scan_cases import make_inputs  # noqa: E402
from timing import write_csv  # noqa: E402

SHAPES = ["8x1536x2048", "1x1536x8192", "1x1536x32768"]


def kernel_times(run, calls=10):
    """{kernel name: mean CUDA ms per call} of what run() launches."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    times = collections.Counter()
    for event in prof.key_averages():
        if event.device_time_total > 0:
            times[event.key.split("(")[0][:48]] += event.device_time_total / calls / 1000
    return times


def measure(dtype, shape, configs):
    """The rows of one dtype and shape, one per configuration."""
    sets, saved = [], []
    for _ in range(3):
        s = make_inputs(shape, getattr(torch, dtype))
        opts = ScanOptions(s["D"], s["z"], s["delta_bias"], True)
        out, _, chunk_states = selective_scan_fwd(s["u"], s["delta"], s["A"], s["B"], s["C"],
                                                  opts)
        sets.append(s)
        saved.append((opts, chunk_states, torch.randn_like(out)))
    rows = []
    for config in configs:
        turn = [0]

        def run():
            turn[0] = (turn[0] + 1) % len(sets)
            s, (opts, chunk_states, dout) = sets[turn[0]], saved[turn[0]]
            return selective_scan_bwd(dout, None, s["u"], s["delta"], s["A"], s["B"], s["C"],
                                      opts, BCLayout(), chunk_states, **config)

        run()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        grads = run()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        del grads
        ms = triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")
        kernels = kernel_times(run)
        row = dict(dtype=dtype, shape="x".join(map(str, shape)), config=repr(config),
                   bwd_ms=round(ms, 4), peak_mib=round(peak, 1),
                   kernels="; ".join(f"{k} {v:.3f}" for k, v in kernels.most_common()))
        rows.append(row)
        print(row, flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, metavar="BxDxL")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--configs", nargs="+", default=["dict()"],
                        help="selective_scan_bwd launch keywords, as Python dicts")
    parser.add_argument("--csv", help="write the rows here")
    args = parser.parse_args()
    configs = [eval(c, {"dict": dict}) for c in args.configs]
    rows = []
    for dtype in args.dtypes:
        for shape in args.shapes:
            rows += measure(dtype, tuple(int(v) for v in shape.split("x")), configs)
            torch.cuda.empty_cache()
    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
