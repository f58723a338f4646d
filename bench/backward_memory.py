"""Forward+backward side by side with mamba-ssm on the GPU: peak memory, memory kept for the
backward pass, bitwise repeatability of the gradients, and time.

    python bench/backward_memory.py [--shape 1 1536 32768] [--dtype bfloat16] [--csv PATH]

N = 16 with delta_softplus, D, z and delta_bias on (as Mamba uses the scan). Memory is
measured from a baseline that holds the inputs and the output gradient: "peak" is the largest
extra allocation during forward+backward, "kept" what the forward pass leaves allocated besides
its output (what it saved for backward). Times are medians of triton.testing.do_bench over
three input sets in turn. mamba-ssm is skipped, with the reason printed, when it is not built
(bench/mamba_ssm_cuda.py).
"""

import argparse
import os
import sys

import torch
import triton.testing

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fusedscan import selective_scan_ext  # noqa: E402
import mamba_ssm_cuda  # noqa: E402
from scan_cases import make_inputs  # noqa: E402
from timing import write_csv  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def inputs(batch, dim, L, dtype):
    """The benchmarks' input set (bench/scan_cases.py), leaves only."""
    x = make_inputs((batch, dim, L), dtype, requires_grad=True)
    del x["g_out"]
    return x


def grads(fn, x, g_out):
    out = fn(**x, delta_softplus=True)
    return torch.autograd.grad(out, list(x.values()), g_out)


def measure(fn, sets, g_out):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn(**sets[0], delta_softplus=True)
    kept = torch.cuda.memory_allocated() - base - out.numel() * out.element_size()
    g = torch.autograd.grad(out, list(sets[0].values()), g_out)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out, g
    first = grads(fn, sets[0], g_out)
    second = grads(fn, sets[0], g_out)
    repeatable = all(torch.equal(a, b) for a, b in zip(first, second))
    del first, second
    i = [0]

    def step(backward):
        i[0] = (i[0] + 1) % len(sets)
        if backward:
            grads(fn, sets[i[0]], g_out)
        else:
            with torch.no_grad():
                fn(**sets[i[0]], delta_softplus=True)

    fwd = triton.testing.do_bench(lambda: step(False), warmup=50, rep=300, return_mode="median")
    fwd_bwd = triton.testing.do_bench(lambda: step(True), warmup=50, rep=300, return_mode="median")
    return dict(peak_mib=peak / 2**20, kept_mib=kept / 2**20, repeatable=repeatable,
                fwd_ms=fwd, fwd_bwd_ms=fwd_bwd)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=3, default=[1, 1536, 32768],
                   metavar=("BATCH", "DIM", "L"))
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--csv", help="write the rows to this CSV file")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("backward_memory.py measures on a CUDA GPU; none is available here")
    batch, dim, L = args.shape
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    sets = [inputs(batch, dim, L, dtype) for _ in range(3)]
    g_out = torch.randn(batch, dim, L, device="cuda", dtype=dtype)
    impls = {"fusedscan": selective_scan_ext}
    try:
        impls["mamba-ssm"] = mamba_ssm_cuda.load()
    except mamba_ssm_cuda.Unavailable as why:
        print(f"mamba-ssm skipped: {why}")
    input_mib = sum(t.numel() * t.element_size() for t in sets[0].values()) / 2**20
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"{args.dtype} batch×dim×L = {batch}×{dim}×{L}, N = 16; one input set {input_mib:.0f} MiB")
    rows = []
    print(f"{'impl':<10} {'peak MiB':>9} {'kept MiB':>9} {'bitwise repeat':>15} {'fwd ms':>8} "
          f"{'fwd+bwd ms':>11}")
    for name, fn in impls.items():
        r = dict(impl=name, dtype=args.dtype, batch=batch, dim=dim, L=L, **measure(fn, sets, g_out))
        rows.append(r)
        print(f"{name:<10} {r['peak_mib']:>9.0f} {r['kept_mib']:>9.1f} {str(r['repeatable']):>15} "
              f"{r['fwd_ms']:>8.3f} {r['fwd_bwd_ms']:>11.3f}")
    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
