"""Inputs and calls of the speed benchmarks (bench/test_scan_speed.py): the shape grid, random
input sets as Mamba uses the scan (N = 16, delta_softplus, D, z, delta_bias), and one function
per measured call.

`python bench/scan_cases.py compile [--jobs N]` compiles every kernel the benchmarks launch, in
parallel processes (the benchmarks' `gpu` fixture does the same unless told not to)."""

import argparse
import concurrent.futures
import multiprocessing

import torch

from fusedscan import selective_scan_ext
from reference import scan_inputs, selective_scan_ref

DSTATE = 16
# batch × dim × L of the grid.
SHAPES = [(8, 1536, 2048), (1, 1536, 8192), (1, 1536, 32768), (1, 1536, 131072),
          (1, 4096, 32768), (4, 2048, 8192), (16, 2048, 2048)]
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
INPUT_SETS = 3
ARGS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def shape_id(shape):
    return "x".join(map(str, shape))


def make_inputs(shape, dtype, requires_grad=False, extensions=False, keep=None):
    """One input set (reference.scan_inputs) as a dict of selective_scan_ext's argument names,
    with the output gradient g_out; with extensions, also delta_threshold (0.2 everywhere:
    about a fifth of Δ̂ is filtered), a_scale and delta_scale (dim,) tensors; with keep,
    keep_idx (batch, keep): sorted random positions of each row."""
    batch, dim, L = shape
    ext = dict(delta_threshold=0.2, a_scale="dim", delta_scale="tensor") if extensions else {}
    args, kwargs = scan_inputs(batch, dim, L, DSTATE, dtype=dtype, keep=keep, device="cuda",
                               **ext)
    x = dict(zip(ARGS, args))
    for t in x.values():
        t.requires_grad_(requires_grad)
    x.update(kwargs)
    x["g_out"] = torch.randn(batch, dim, keep or L, device="cuda", dtype=dtype)
    return x


def _ext_kwargs(s):
    return {k: s[k] for k in ("delta_threshold", "a_scale", "delta_scale", "keep_idx") if k in s}


def _grads(out, s):
    leaves = [s[k] for k in ARGS]
    return torch.autograd.grad(out, leaves, s["g_out"])


def fused_forward(s):
    with torch.no_grad():
        return selective_scan_ext(*(s[k] for k in ARGS), True, **_ext_kwargs(s))


def fused_forward_backward(s):
    return _grads(selective_scan_ext(*(s[k] for k in ARGS), True, **_ext_kwargs(s)), s)


def reference_forward(s):
    with torch.no_grad():
        return selective_scan_ref(*(s[k] for k in ARGS), True)


def mamba_calls(mamba_fn):
    """(forward, forward+backward, gather-then-scan) with mamba-ssm's selective_scan_fn."""
    def forward(s):
        with torch.no_grad():
            return mamba_fn(*(s[k] for k in ARGS), True)

    def forward_backward(s):
        return _grads(mamba_fn(*(s[k] for k in ARGS), True), s)

    def gathered_forward(s):
        # What DeciMamba does today: copy the kept positions out with PyTorch, then scan.
        idx = s["keep_idx"]
        with torch.no_grad():
            u, delta, z = (s[k].gather(2, idx[:, None].expand(-1, s[k].shape[1], -1))
                           for k in ("u", "delta", "z"))
            B, C = (s[k].gather(2, idx[:, None].expand(-1, DSTATE, -1)) for k in ("B", "C"))
            return mamba_fn(u, delta, s["A"], B, C, s["D"], z, s["delta_bias"], True)

    return forward, forward_backward, gathered_forward


# Kernel variants the benchmarks compile: (dtype, extensions, keep fraction, backward).
VARIANTS = [(dtype, ext, keep, bwd) for dtype in DTYPES
            for ext, keep, bwd in ((False, None, True), (True, None, True), (False, 4, False))]


def compile_variant(variant):
    """Runs one variant at two small shapes of the grid's kind, so that every kernel it
    launches (with or without the range-state pass of the backward) lands in Triton's cache."""
    dtype, ext, keep, bwd = variant
    for shape in ((8, 1536, 2048), (1, 1536, 8192)):
        s = make_inputs(shape, DTYPES[dtype], requires_grad=bwd, extensions=ext,
                        keep=shape[2] // keep if keep else None)
        (fused_forward_backward if bwd else fused_forward)(s)
    torch.cuda.synchronize()
    return variant


def compile_all(jobs):
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        return list(pool.map(compile_variant, VARIANTS))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="compile the benchmarks' kernels")
    parser.add_argument("action", choices=["compile"])
    parser.add_argument("--jobs", type=int, default=8)
    print(compile_all(parser.parse_args().jobs))
