"""First-call compile time on the GPU machine, with an empty Triton cache.

    python bench/cold_start.py [--dim 1536] [--length 2048] [--jobs 16]

1. A fresh process with an empty cache makes the calls a mamba-130m layer makes (bf16,
   N 16, Mamba's options): a prefill, a backward pass, a decode step; the seconds of each first
   call are printed (each waits for its kernels to compile).
2. With another empty cache, `python -m fusedscan.warmup --backward` compiles ahead; its wall
   time is printed, then step 1 runs again on that cache.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

FIRST_CALLS = r"""
import time, torch
from fusedscan import selective_scan_ext, selective_state_update_ext
dim, L, N = {dim}, {length}, 16
dev, dt = "cuda", torch.bfloat16
u, delta, z = (torch.randn(1, dim, L, device=dev, dtype=dt) for _ in range(3))
B, C = (torch.randn(1, N, L, device=dev, dtype=dt) for _ in range(2))
A, D, bias = -torch.rand(dim, N, device=dev), torch.randn(dim, device=dev), torch.randn(dim, device=dev)
leaves = [u, delta, A, B, C, D, z, bias]
for t in leaves:
    t.requires_grad_()
t0 = time.perf_counter()
out, last = selective_scan_ext(*leaves, True, True)
torch.cuda.synchronize()
t1 = time.perf_counter()
torch.autograd.grad((out.float().sum(), last.sum()), leaves)
torch.cuda.synchronize()
t2 = time.perf_counter()
with torch.no_grad():
    x = u[:, :, 0].detach()
    selective_state_update_ext(last.detach().clone(), x, x, A.detach(), B[..., 0].detach(),
                               C[..., 0].detach(), D.detach(), x, bias.detach(), True)
torch.cuda.synchronize()
t3 = time.perf_counter()
print(f"first prefill {{t1 - t0:.1f}} s, first backward {{t2 - t1:.1f}} s, "
      f"first decode step {{t3 - t2:.1f}} s")
"""


def run(cmd, cache):
    env = dict(os.environ, TRITON_CACHE_DIR=cache)
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode:
        print(result.stdout, result.stderr, file=sys.stderr)
        raise SystemExit(result.returncode)
    return result.stdout.strip(), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--jobs", type=int, default=16)
    args = parser.parse_args()
    calls = [sys.executable, "-c", FIRST_CALLS.format(dim=args.dim, length=args.length)]
    with tempfile.TemporaryDirectory() as cold, tempfile.TemporaryDirectory() as warm:
        out, _ = run(calls, cold)
        print(f"empty cache: {out}")
        _, seconds = run([sys.executable, "-m", "fusedscan.warmup", "--dim", str(args.dim),
                          "--backward", "--jobs", str(args.jobs)], warm)
        print(f"python -m fusedscan.warmup --dim {args.dim} --backward --jobs {args.jobs}: "
              f"{seconds:.1f} s")
        out, _ = run(calls, warm)
        print(f"after the warm-up: {out}")


if __name__ == "__main__":
    main()
