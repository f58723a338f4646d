"""Forward launch-configuration sweep on the GPU: times selective_scan_fwd for each
(channels per program, warps, position segments) at the shapes of the benchmark grid and writes
a CSV. Timing: triton.testing.do_bench (CUDA events), median, after warm-up, rotating over three
input sets so that no run reads inputs left in L2 by the previous one.

usage: python bench/sweep_forward.py OUT.csv
"""

import csv
import itertools
import sys

import torch
import triton.testing

from fusedscan.selective_scan.interface import selective_scan_fwd

SHAPES = [(8, 1536, 2048), (1, 1536, 8192), (1, 1536, 32768), (1, 1536, 131072),
          (1, 4096, 32768), (4, 2048, 8192)]
CONFIGS = [(4, 4), (8, 8), (8, 4)]  # (BLOCK_D, num_warps): one channel row per warp
SEGMENTS = [1, 2]


def inputs(batch, dim, L, dtype, n=16):
    dev = "cuda"
    return dict(u=torch.randn(batch, dim, L, device=dev, dtype=dtype),
                delta=(0.5 * torch.randn(batch, dim, L, device=dev) - 1).to(dtype),
                A=-torch.rand(dim, n, device=dev) - 0.2,
                B=torch.randn(batch, n, L, device=dev, dtype=dtype),
                C=torch.randn(batch, n, L, device=dev, dtype=dtype),
                D=torch.randn(dim, device=dev), z=torch.randn(batch, dim, L, device=dev, dtype=dtype),
                delta_bias=torch.randn(dim, device=dev) * 0.1, delta_softplus=True)


def main(path):
    rows = []
    for dtype, (batch, dim, L) in itertools.product([torch.bfloat16, torch.float32], SHAPES):
        sets = [inputs(batch, dim, L, dtype) for _ in range(3)]
        for (block_d, warps), segs in itertools.product(CONFIGS, SEGMENTS):
            i = [0]

            def run():
                i[0] = (i[0] + 1) % 3
                selective_scan_fwd(**sets[i[0]], B_variable=True, C_variable=True,
                                   block_d=block_d, num_warps=warps, num_segments=segs)

            ms = triton.testing.do_bench(run, warmup=50, rep=300, return_mode="median")
            elems = batch * dim * L * 16
            row = dict(dtype=str(dtype).replace("torch.", ""), batch=batch, dim=dim, L=L,
                       block_d=block_d, num_warps=warps, segments=segs, ms=round(ms, 4),
                       gelem_per_s=round(elems / ms / 1e6, 1))
            rows.append(row)
            print(row, flush=True)
        del sets
        torch.cuda.empty_cache()
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main(sys.argv[1])
