"""The scan's kernels compiled for a GPU on a machine without one: for each launch that
selective_scan_fwd and selective_scan_bwd would make at a shape, dtype and launch
configuration, its registers, spills, shared memory and SASS instruction mix, from Triton's
own binder (the specialization a real launch gets) and the ptxas and cuobjdump bundled with
Triton. Read these before spending GPU time on a kernel change (docs/kernel-log.md).

    python bench/offline_compile.py [--shapes BxDxL ...] [--dtypes ...] [--sms 132]
        [--arch 90] [--backward-configs "dict(maxnreg=200)" ...] [--kernels REGEX]
        [--sass DIR] [--csv PATH]

The launches are found by running the launchers on meta tensors (no data, no device) with
LaunchPlan's launch replaced by a recorder; the plans' choices that depend on the GPU take
`--sms` multiprocessors. Inputs as the benchmarks' (N = 16, delta_softplus, D, z,
delta_bias), addresses aligned to 16 bytes, contiguous.
"""

import argparse
import collections
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import create_function_from_signature

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fusedscan.selective_scan import chunk, chunk_backward  # noqa: E402
from fusedscan.selective_scan.options import BCLayout, ScanOptions  # noqa: E402
from fusedscan.utils import launch  # noqa: E402
from timing import write_csv  # noqa: E402

DSTATE = 16
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# SASS opcodes worth counting: memory (LDGSTS: asynchronous copies to shared memory; LDL/STL:
# spills), the exp unit, shuffles, barriers and the float arithmetic.
OPCODES = ("LDG", "LDGSTS", "STG", "LDS", "STS", "LDL", "STL", "MUFU", "SHFL", "BAR", "FFMA",
           "FMUL", "FADD")


@contextlib.contextmanager
def recorded_launches(sms):
    """Within: LaunchPlan calls are recorded in the yielded list as (plan, args) instead of
    launched, the plans see `sms` multiprocessors and the current CUDA device is the meta one."""
    launches = []
    saved = (launch.LaunchPlan.__call__, chunk.multiprocessor_count,
             chunk_backward.multiprocessor_count, torch.cuda.current_device)
    launch.LaunchPlan.__call__ = lambda plan, *args: launches.append((plan, args))
    chunk.multiprocessor_count = chunk_backward.multiprocessor_count = lambda device: sms
    torch.cuda.current_device = lambda: -1
    try:
        yield launches
    finally:
        (launch.LaunchPlan.__call__, chunk.multiprocessor_count,
         chunk_backward.multiprocessor_count, torch.cuda.current_device) = saved


def scan_launches(shape, dtype, sms, backward_config):
    """[(plan, args)] of one forward and one backward launcher call on meta tensors."""
    batch, dim, L = shape
    meta = dict(device="meta")
    u, delta, z, dout = (torch.empty(batch, dim, L, dtype=dtype, **meta) for _ in range(4))
    A = torch.empty(dim, DSTATE, **meta)
    B, C = (torch.empty(batch, DSTATE, L, dtype=dtype, **meta) for _ in range(2))
    D, delta_bias = (torch.empty(dim, **meta) for _ in range(2))
    opts = ScanOptions(D, z, delta_bias, True)
    with recorded_launches(sms) as launches:
        _, _, chunk_states = chunk.selective_scan_fwd(u, delta, A, B, C, opts)
        chunk_backward.selective_scan_bwd(dout, None, u, delta, A, B, C, opts, BCLayout(),
                                          chunk_states, **backward_config)
    return launches


def compile_launch(plan, args, arch):
    """The CompiledKernel that this launch of the plan would run on an sm_`arch` GPU."""
    kernel = plan.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    kwargs = dict(zip(plan.names, [plan.absent if a is None else a for a in args] +
                      list(plan.static)), **plan.options)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                              specialization, options)
    source = triton.compiler.ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=target, options=options.__dict__)


def report(compiled, arch, sass_path=None):
    """{registers, spill stores, spill loads, shared memory, SASS counts} of a compiled kernel
    (ptxas -v on its PTX with the kernel's register cap; cuobjdump on its cubin)."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        cmd = [os.path.join(BIN, "ptxas"), f"-arch=sm_{arch}a", "-v", ptx, "-o", os.devnull]
        if compiled.metadata.maxnreg:
            cmd += ["--maxrregcount", str(compiled.metadata.maxnreg)]
        ptxas = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cubin],
                              capture_output=True, text=True, check=True).stdout
    if sass_path:
        with open(sass_path, "w") as f:
            f.write(sass)
    ops = collections.Counter(m.group(1).split(".")[0] for m in re.finditer(
        r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
    return dict(registers=int(re.search(r"Used (\d+) registers", ptxas).group(1)),
                spill_stores=int(spills.group(1)), spill_loads=int(spills.group(2)),
                shared=compiled.metadata.shared, sass=sum(ops.values()),
                **{op: ops[op] for op in OPCODES})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["1x1536x32768"], metavar="BxDxL")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--sms", type=int, default=132,
                        help="multiprocessors the launch plans assume (H100 and H200: 132)")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, as 90")
    parser.add_argument("--backward-configs", nargs="+", default=["dict()"],
                        help="selective_scan_bwd launch keywords, as Python dicts")
    parser.add_argument("--kernels", default="",
                        help="compile only the kernels whose name matches this regex")
    parser.add_argument("--sass", help="write each kernel's SASS into this folder")
    parser.add_argument("--csv", help="write the rows here")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the kernels are compiled, not interpreted")
    rows = []
    for dtype in args.dtypes:
        for shape in args.shapes:
            for config in args.backward_configs:
                launches = scan_launches(tuple(int(v) for v in shape.split("x")),
                                         getattr(torch, dtype), args.sms,
                                         eval(config, {"dict": dict}))
                for i, (plan, launch_args) in enumerate(launches):
                    name = plan.kernel.fn.__name__
                    if not re.search(args.kernels, name):
                        continue
                    t0 = time.time()
                    compiled = compile_launch(plan, launch_args, args.arch)
                    seconds = time.time() - t0
                    sass_path = None
                    if args.sass:
                        os.makedirs(args.sass, exist_ok=True)
                        sass_path = os.path.join(args.sass, f"{dtype}_{shape}_{i}_{name}.sass")
                    row = dict(dtype=dtype, shape=shape, backward_config=config, kernel=name,
                               grid="x".join(map(str, plan.grid)), **plan.options,
                               compile_s=round(seconds, 1),
                               **report(compiled, args.arch, sass_path))
                    rows.append(row)
                    print(row, flush=True)
    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
