"""Where the host time of one selective_scan_ext call goes (GPU machine).

    python bench/host_profile.py [--csv host.csv]

For bf16 1×1536×512 and 1×1536×2048 (N 16, Mamba's options), forward under no_grad and
forward+backward:
- isolated: synchronize, call, synchronize (what a model layer sees), median of 200;
- host: the wall time from the call to its return with the queue drained first (nothing in
  the call waits for the GPU, so this is the host's own cost);
- queued: triton.testing.do_bench (CUDA events, calls back to back), the kernels' own time;
- paired: isolated and host times of fusedscan and mamba-ssm with their calls interleaved,
  median of 300 each (the fair comparison on a host whose speed drifts);
- split: a forward+backward call's host time in parts (the forward, autograd.grad, each
  library's backward function, fusedscan's backward launcher), interleaved likewise.
Then the stages of one call, each timed alone the same way (median of 500): the argument
checks, the forward launcher (allocations and launches), the backward launcher, autograd
around a trivial function of as many inputs, each kernel launch (forward and backward)
replayed with its recorded arguments through its launch plan and through Triton's own launch
path; the host synchronizations of one forward+backward call (torch's sync debug mode); and
for scale a launch of an empty kernel with 4, 24, 48 and 96 arguments and a trivial custom op
against a plain autograd.Function.
"""

import argparse
import os
import statistics
import sys
import time

import torch
import triton
import triton.testing

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fusedscan import selective_scan_ext  # noqa: E402
from fusedscan.selective_scan.chunk_backward import selective_scan_bwd  # noqa: E402
from fusedscan.selective_scan.options import BCLayout  # noqa: E402
from fusedscan.utils.launch import LaunchPlan  # noqa: E402
from scan_cases import ARGS, make_inputs  # noqa: E402
from timing import host_ms, isolated_ms, paired_times, write_csv  # noqa: E402

SHAPES = [(1, 1536, 512), (1, 1536, 2048)]


def queued_ms(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def _empty_kernel(count):
    """A Triton kernel that does nothing, with `count` parameters (written to a module file:
    Triton reads a kernel's source)."""
    import importlib.util
    import tempfile
    params = ", ".join(f"a{i}" for i in range(count))
    path = os.path.join(tempfile.mkdtemp(), f"empty_{count}.py")
    with open(path, "w") as f:
        f.write(f"import triton\n\n@triton.jit\ndef empty({params}):\n    pass\n")
    spec = importlib.util.spec_from_file_location(f"empty_{count}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.empty


def launch_cost_rows():
    x = torch.empty(16, device="cuda")
    rows = []
    for count in (4, 24, 48, 96):
        kernel = _empty_kernel(count)
        # Half pointers, half ints, like the scan's kernels.
        args = [x if i % 2 else 7 + i for i in range(count)]
        kernel[(1,)](*args)
        rows.append(("empty kernel", f"{count} args", host_ms(lambda: kernel[(1,)](*args))))
    return rows


def dispatch_rows():
    x = torch.empty(16, device="cuda")

    @torch.library.custom_op("host_profile::identity", mutates_args=())
    def identity(a: torch.Tensor, b: torch.Tensor | None, c: float | None, d: bool) -> torch.Tensor:
        return a.new_empty(a.shape)

    identity.register_autograd(lambda ctx, g: (g, None, None, None),
                               setup_context=lambda ctx, inputs, output: None)

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, c, d):
            return a.new_empty(a.shape)

        @staticmethod
        def backward(ctx, g):
            return g, None, None, None

    xg = x.clone().requires_grad_()
    rows = []
    with torch.no_grad():
        rows.append(("dispatch", "custom op, no_grad", host_ms(lambda: identity(x, None, 1.0, True))))
        rows.append(("dispatch", "autograd.Function, no_grad",
                     host_ms(lambda: Identity.apply(x, None, 1.0, True))))
    rows.append(("dispatch", "custom op, requires_grad", host_ms(lambda: identity(xg, None, 1.0, True))))
    rows.append(("dispatch", "autograd.Function, requires_grad",
                 host_ms(lambda: Identity.apply(xg, None, 1.0, True))))
    return rows


class Recorder:
    """Records every launch plan's call (LaunchPlan.__call__, replaced on the class) so that each
    launch can be replayed and timed alone."""

    def __enter__(self):
        self.calls = []
        real = LaunchPlan.__call__

        def call(plan, *args):
            self.calls.append((plan, args))
            return real(plan, *args)
        LaunchPlan.__call__ = call
        self.real = real
        return self

    def __exit__(self, *exc):
        LaunchPlan.__call__ = self.real


def stage_rows(shape):
    s = make_inputs(shape, torch.bfloat16)
    args = [s[k] for k in ARGS]
    rows = []
    with torch.no_grad():
        call = lambda: selective_scan_ext(*args, True)  # noqa: E731
        call()
        from fusedscan.selective_scan.chunk import selective_scan_fwd
        from fusedscan.selective_scan.options import ScanOptions
        from fusedscan.selective_scan.validate import check_inputs
        rows.append(("stage", "check_inputs", host_ms(lambda: check_inputs(
            *args, True, False, None, None, None, None, None))))
        opts = ScanOptions(*args[5:], True)
        rows.append(("stage", "launcher selective_scan_fwd", host_ms(
            lambda: selective_scan_fwd(*args[:5], opts))))
        rows.append(("stage", "whole call", host_ms(call)))
        with Recorder() as rec:
            call()
    rows += backward_stage_rows(s, args)
    for plan, a in rec.calls + backward_launches(s, args):
        name = f"{plan.kernel.fn.__name__} grid {plan.grid}"
        rows.append(("launch", f"{name}, launch plan", host_ms(lambda: plan(*a))))
        rows.append(("launch", f"{name}, through Triton",
                     host_ms(lambda: plan.launch_through_triton(*a))))
    return rows


def _backward_inputs(s, args):
    from fusedscan.selective_scan.chunk import selective_scan_fwd
    from fusedscan.selective_scan.options import ScanOptions
    opts = ScanOptions(*args[5:], True)
    with torch.no_grad():
        out, _, chunk_states = selective_scan_fwd(*args[:5], opts)
    return (s["g_out"], None, *args[:5], opts, BCLayout(), chunk_states)


def backward_launches(s, args):
    """The backward launcher's recorded launches."""
    bwd_args = _backward_inputs(s, args)
    with Recorder() as rec:
        selective_scan_bwd(*bwd_args)
    return rec.calls


def backward_stage_rows(s, args):
    """The backward launcher alone, autograd around a trivial function of as many inputs, and
    the host synchronizations one forward+backward call makes (torch's sync debug mode)."""
    import warnings
    bwd_args = _backward_inputs(s, args)
    selective_scan_bwd(*bwd_args)
    rows = [("stage", "launcher selective_scan_bwd", host_ms(lambda: selective_scan_bwd(*bwd_args)))]

    class Pass(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            return xs[0].new_empty(xs[0].shape)

        @staticmethod
        def backward(ctx, g):
            return (g,) + (None,) * (len(args) - 1)

    leaves = [x.detach().requires_grad_() if torch.is_tensor(x) else x for x in args]
    tensors = [x for x in leaves if torch.is_tensor(x)]
    grad = torch.ones_like(args[0])
    rows.append(("stage", "autograd.grad of a trivial Function",
                 host_ms(lambda: torch.autograd.grad(Pass.apply(*leaves), tensors, grad,
                                                     allow_unused=True))))
    grads = [x.detach().requires_grad_() if torch.is_tensor(x) and x.is_floating_point() else x
             for x in args]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = selective_scan_ext(*grads, True)
            torch.autograd.grad(out, [x for x in grads if torch.is_tensor(x)], s["g_out"],
                                allow_unused=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchronizing CUDA operation" in str(w.message)]
    for m in syncs[:3]:
        print("host synchronization:", m)
    rows.append(("stage", "host synchronizations in forward+backward (a count)",
                 float(len(syncs))))
    return rows


def call_rows(shape, scan=selective_scan_ext, label=""):
    sets = [make_inputs(shape, torch.bfloat16, requires_grad=True) for _ in range(3)]
    it = iter(range(10**9))

    def fwd():
        s = sets[next(it) % 3]
        with torch.no_grad():
            return scan(*(s[k] for k in ARGS), True)

    def fwd_bwd():
        s = sets[next(it) % 3]
        out = scan(*(s[k] for k in ARGS), True)
        return torch.autograd.grad(out, [s[k] for k in ARGS], s["g_out"])

    rows = []
    for name, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
        fn()
        rows.append((name + label, "isolated", isolated_ms(fn)))
        rows.append((name + label, "host", host_ms(fn, 200)))
        rows.append((name + label, "queued", queued_ms(fn)))
    return rows


def paired_rows(shape, mamba_fn):
    """Forward and forward+backward of fusedscan and mamba-ssm, their isolated calls
    interleaved (bench/timing.py paired_times), median of 300 each."""
    sets = [make_inputs(shape, torch.bfloat16, requires_grad=True) for _ in range(3)]
    it = iter(range(10**9))
    rows = []
    for pass_ in ("forward", "forward_backward"):
        def call(scan):
            def run():
                s = sets[next(it) % 3]
                if pass_ == "forward":
                    with torch.no_grad():
                        return scan(*(s[k] for k in ARGS), True)
                return torch.autograd.grad(scan(*(s[k] for k in ARGS), True),
                                           [s[k] for k in ARGS], s["g_out"])
            run()
            return run
        times = paired_times({"fusedscan": call(selective_scan_ext),
                              "mamba-ssm": call(mamba_fn)}, 300)
        for name, (walls, hosts) in times.items():
            rows.append((f"{pass_} paired", f"{name} isolated", statistics.median(walls) * 1e3))
            rows.append((f"{pass_} paired", f"{name} host", statistics.median(hosts) * 1e3))
    return rows


def split_rows(shape, mamba_fn):
    """A forward+backward call's host time in parts, fusedscan's and mamba-ssm's calls
    interleaved (median of 400 each): the forward with autograd recording, autograd.grad, and
    within it each library's backward function and fusedscan's backward launcher."""
    from fusedscan.selective_scan import interface
    stamps = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            stamps[name] = time.perf_counter() - t0
            return result
        return wrapper

    mamba_function = sys.modules[mamba_fn.__module__].SelectiveScanFn
    patches = [(interface, "selective_scan_bwd", "launcher"),
               (interface.SelectiveScanFunction, "backward", "fusedscan backward function"),
               (mamba_function, "backward", "mamba-ssm backward function")]
    originals = [(obj, attr, vars(obj)[attr]) for obj, attr, _ in patches]
    for obj, attr, name in patches:
        wrapped = timed(name, getattr(obj, attr))
        setattr(obj, attr, staticmethod(wrapped) if isinstance(obj, type) else wrapped)
    sets = [make_inputs(shape, torch.bfloat16, requires_grad=True) for _ in range(3)]
    parts = {"fusedscan": [], "mamba-ssm": []}
    try:
        for i in range(420):
            for name in (("fusedscan", "mamba-ssm") if i % 2 else ("mamba-ssm", "fusedscan")):
                scan = selective_scan_ext if name == "fusedscan" else mamba_fn
                s = sets[i % 3]
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = scan(*(s[k] for k in ARGS), True)
                t1 = time.perf_counter()
                torch.autograd.grad(out, [s[k] for k in ARGS], s["g_out"])
                t2 = time.perf_counter()
                row = {"forward": t1 - t0, "autograd.grad": t2 - t1,
                       "backward function": stamps[f"{name} backward function"]}
                if name == "fusedscan":
                    row["backward launcher"] = stamps["launcher"]
                if i >= 20:
                    parts[name].append(row)
    finally:
        for obj, attr, original in originals:
            setattr(obj, attr, original)
    return [(f"split {name}", part, statistics.median(r[part] for r in rs) * 1e3)
            for name, rs in parts.items() for part in rs[0]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", help="write the rows here")
    args = parser.parse_args()
    import mamba_ssm_cuda
    try:
        mamba_fn = mamba_ssm_cuda.load()
    except mamba_ssm_cuda.Unavailable as e:
        print(f"mamba-ssm not measured: {e}")
        mamba_fn = None
    rows = []
    for shape in SHAPES:
        sid = "x".join(map(str, shape))
        rows += [(sid, *r) for r in call_rows(shape)]
        if mamba_fn is not None:
            rows += [(sid, *r) for r in call_rows(shape, mamba_fn, " mamba-ssm")]
            rows += [(sid, *r) for r in paired_rows(shape, mamba_fn)]
            rows += [(sid, *r) for r in split_rows(shape, mamba_fn)]
        rows += [(sid, *r) for r in stage_rows(shape)]
    rows += [("-", *r) for r in launch_cost_rows()]
    rows += [("-", *r) for r in dispatch_rows()]
    if args.csv:
        write_csv(args.csv, [dict(shape=r[0], what=r[1], how=r[2], ms=r[3]) for r in rows])
    for shape, what, how, ms in rows:
        value = f"{ms:9.0f}" if "count" in how else f"{ms * 1e3:9.1f} us"
        print(f"{shape:12s} {what:20s} {how:44s} {value}")


if __name__ == "__main__":
    main()
