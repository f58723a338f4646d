"""Compile ahead, in parallel, the kernels a Mamba model will launch, so that its first call does
not wait for Triton.

    python -m fusedscan.warmup --dim 1536 --dstate 16 --dtype bfloat16 [--backward]
        [--methods longmamba modulation mambaextend decimamba] [--jobs 8]

dim is the model's inner width (expand · hidden size: 1536 for mamba-130m, 5120 for
mamba-2.8b), dstate its N. Each job runs one kind of call at that width on random inputs in
its own process; the compiled kernels land in Triton's on-disk cache (TRITON_CACHE_DIR, by
default ~/.triton/cache), where the model's process finds them. A kernel is compiled for each
launch configuration and for each class of sequence length that Triton tells apart (a multiple
of 16 or not; short prompts take other configurations than long ones), so the jobs cover
prompt lengths on both sides of each boundary. Prints the seconds each job took.
"""

import argparse
import concurrent.futures
import multiprocessing
import time

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
METHODS = ("longmamba", "modulation", "mambaextend", "decimamba")
# Prompt lengths of the prefill jobs: the three tiles of one-tile launches (up to 512, 1024 and
# 2048 positions: one channel per program) and long ones (channel blocks, split positions),
# each a multiple of 16 and not.
LENGTHS = (512, 511, 1024, 1023, 2048, 2047, 8192, 8191)


def _method_options(method, dim, dstate, device):
    """selective_scan_ext keywords a patched model passes for a method."""
    if method == "longmamba":
        return {"delta_threshold": torch.full((dim,), 0.1, device=device)}
    if method == "modulation":
        return {"a_scale": 0.5 + torch.rand(dim, dstate, device=device)}
    if method == "mambaextend":
        return {"delta_scale": 1.5}
    if method == "decimamba":
        return {"keep": True}
    return {}


def run_job(job):
    """Runs one job (kind, dim, dstate, dtype name, batch, length, method); returns (job,
    seconds)."""
    from fusedscan import decimate, selective_scan_ext, selective_state_update_ext
    kind, dim, dstate, dtype, batch, length, method = job
    dtype, dev = DTYPES[dtype], "cuda"
    start = time.perf_counter()
    if kind == "decode":
        x = torch.randn(batch, dim, device=dev, dtype=dtype)
        state = torch.zeros(batch, dim, dstate, device=dev)
        with torch.no_grad():
            selective_state_update_ext(state, x, x, -torch.rand(dim, dstate, device=dev),
                                       torch.randn(batch, dstate, device=dev, dtype=dtype),
                                       torch.randn(batch, dstate, device=dev, dtype=dtype),
                                       torch.randn(dim, device=dev), x,
                                       torch.randn(dim, device=dev), True)
    else:
        u, delta, z = (torch.randn(batch, dim, length, device=dev, dtype=dtype) for _ in range(3))
        B, C = (torch.randn(batch, dstate, length, device=dev, dtype=dtype) for _ in range(2))
        A = -torch.rand(dim, dstate, device=dev)
        D, bias = torch.randn(dim, device=dev), torch.randn(dim, device=dev)
        options = _method_options(method, dim, dstate, dev)
        if options.pop("keep", False):
            options["keep_idx"] = decimate(delta, bias, length // 4)
        leaves = (u, delta, A, B, C, D, z, bias)
        for t in leaves:
            t.requires_grad_(kind == "backward")
        out, last = selective_scan_ext(*leaves, True, True, **options)
        if kind == "backward":
            torch.autograd.grad((out.float().sum(), last.sum()), leaves)
    torch.cuda.synchronize()
    return job, time.perf_counter() - start


def warmup_jobs(dim, dstate, dtype, batch=1, backward=False, methods=(), lengths=LENGTHS):
    """The jobs for a model: prefill at each length class, with no method and with each
    method; the decode step; the backward pass if asked."""
    kinds = ["prefill"] + (["backward"] if backward else [])
    out = [(kind, dim, dstate, dtype, batch, length, method) for kind in kinds
           for length in lengths for method in (None, *methods)]
    out.append(("decode", dim, dstate, dtype, batch, 1, None))
    return out


def compile_ahead(dim, dstate, dtype="bfloat16", batch=1, backward=False, methods=(),
                  processes=8, lengths=LENGTHS):
    """Runs warmup_jobs() in `processes` processes; returns [(job, seconds)]."""
    todo = warmup_jobs(dim, dstate, dtype, batch, backward, methods, lengths)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        return list(pool.map(run_job, todo))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fusedscan.warmup", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dim", type=int, required=True,
                        help="the model's inner width, expand · hidden size")
    parser.add_argument("--dstate", type=int, default=16, help="states per channel, N")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                        help="the model's dtype")
    parser.add_argument("--batch", type=int, default=1, help="prompts per call")
    parser.add_argument("--backward", action="store_true", help="also the backward kernels")
    parser.add_argument("--methods", nargs="*", choices=METHODS, default=[],
                        help="length-extension methods the model will run with")
    parser.add_argument("--jobs", type=int, default=8, help="compiling processes")
    args = parser.parse_args(argv)
    if args.dim < 1 or args.dstate < 1 or args.batch < 1 or args.jobs < 1:
        parser.error("--dim, --dstate, --batch and --jobs must be >= 1")
    if not torch.cuda.is_available():
        parser.error("compiling ahead needs a CUDA GPU (the CPU interpreter compiles nothing)")
    start = time.perf_counter()
    for job, seconds in compile_ahead(args.dim, args.dstate, args.dtype, args.batch,
                                      args.backward, args.methods, args.jobs):
        kind, _, _, _, _, length, method = job
        print(f"{kind:9s} L={length:<6d} method={method or '-':12s} {seconds:6.1f} s")
    print(f"all kernels compiled in {time.perf_counter() - start:.1f} s "
          f"({args.jobs} processes)")


if __name__ == "__main__":
    main()
