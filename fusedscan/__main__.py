"""python -m fusedscan: run every option of selective_scan_ext on this machine, forward and
backward, compare outputs and gradients with the float64 reference and print tables of errors
and timings.

On a CUDA GPU it runs natively; without one it runs on the CPU through Triton's interpreter at
a small default size (re-running itself with TRITON_INTERPRET=1, which must be set before
fusedscan is imported).
"""

import argparse
import importlib
import os
import sys
import textwrap
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Columns of the printed report.
WIDTH = 100


def _positive(text):
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _parse(argv):
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m fusedscan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=_positive, default=2, help="batch rows")
    p.add_argument("--dim", type=_positive, default=256 if gpu else 8,
                   help="channels (the default is smaller on the CPU)")
    p.add_argument("--seqlen", type=_positive, default=4099 if gpu else 67,
                   help="positions L (the default is smaller on the CPU)")
    p.add_argument("--dstate", type=_positive, default=16 if gpu else 4,
                   help="states N per channel, at most 256 (the default is smaller on the CPU)")
    p.add_argument("--dtype", choices=sorted(DTYPES), nargs="+", default=["float32", "bfloat16"],
                   help="dtypes of u, delta, z, B and C to run")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = p.parse_args(argv)
    if args.dstate > 256:
        p.error(f"argument --dstate: at most 256, got {args.dstate}")
    return args


def _cases(dim, dstate, L, batch, device):
    """(name, extra keyword arguments) for every option, one at a time and all together."""
    keep = torch.stack([torch.randperm(L, device=device)[: max(1, L // 4)].sort().values
                        for _ in range(batch)])
    thr = torch.full((dim,), -float("inf"), device=device)
    thr[::2] = 0.2
    return [
        ("plain (mamba-ssm args)", {}),
        ("initial_state", {"initial_state": torch.randn(batch, dim, dstate, device=device)}),
        ("delta_scale (dim,)", {"delta_scale": 0.5 + torch.rand(dim, device=device)}),
        ("delta_scale float", {"delta_scale": 0.7}),
        ("a_scale (dim, N)", {"a_scale": 0.5 + torch.rand(dim, dstate, device=device)}),
        ("a_scale float", {"a_scale": 0.8}),
        ("delta_threshold", {"delta_threshold": thr}),
        ("keep_idx K=L/4", {"keep_idx": keep}),
        ("all extensions", {"initial_state": torch.randn(batch, dim, dstate, device=device),
                            "delta_scale": 0.5 + torch.rand(dim, device=device),
                            "a_scale": 0.5 + torch.rand(dim, device=device),
                            "delta_threshold": thr, "keep_idx": keep}),
    ]


def _time(fn, gpu):
    if gpu:
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _grads(fn, pos, kw, g_out, g_state):
    """Gradients of Σ out·g_out + Σ last_state·g_state for every floating tensor input."""
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = {}
    pos = list(pos)
    for i, name in enumerate(names):
        pos[i] = leaves[name] = pos[i].detach().clone().requires_grad_(True)
    kw = dict(kw)
    for name in ("initial_state", "delta_scale", "a_scale"):
        if torch.is_tensor(kw.get(name)):
            kw[name] = leaves[name] = kw[name].detach().clone().requires_grad_(True)
    out, state = fn(*pos, **kw)
    loss = (out * g_out.to(out.dtype)).sum() + (state * g_state.to(state.dtype)).sum()
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def _double(x):
    return x.double() if torch.is_tensor(x) and x.is_floating_point() else x


def _rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def state_error(state, ref_state, ref_peak):
    """‖state − ref_state‖ / ‖ref_peak‖, ref_peak the largest magnitude each element of the
    reference's state reached (selective_scan_ref's return_state_peak): a float32 scan's
    rounding error in the last state scales with the terms that summed to it, and where the
    state ends near zero after larger values, relative to the last state alone a correct
    kernel would read as wrong."""
    return ((state.double() - ref_state).norm() / ref_peak.norm().clamp_min(1e-30)).item()


def reference():
    """The float64 references: fusedscan.reference where fusedscan is installed (the
    repository's reference/ folder, installed under fusedscan's name), the folder itself in a
    checkout used through PYTHONPATH."""
    try:
        return importlib.import_module("fusedscan.reference")
    except ModuleNotFoundError as e:
        if e.name != "fusedscan.reference":
            raise
        return importlib.import_module("reference")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        os.execve(sys.executable, [sys.executable, "-m", "fusedscan", *argv],
                  dict(os.environ, TRITON_INTERPRET="1"))
    from fusedscan import selective_scan_ext
    ref = reference()
    forward_tolerance, grad_tolerance = ref.forward_tolerance, ref.grad_tolerance
    scan_inputs, selective_scan_ref = ref.scan_inputs, ref.selective_scan_ref

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    torch.manual_seed(args.seed)
    b, d, L, n = args.batch, args.dim, args.seqlen, args.dstate
    where = torch.cuda.get_device_name() if gpu else "CPU (Triton interpreter)"
    print(textwrap.fill(
        f"fusedscan on {where}; torch {torch.__version__}; batch={b} dim={d} L={L} N={n}; "
        "delta_softplus, D, z, delta_bias on. Errors against the float64 reference on the same "
        "rounded inputs: ‖x − ref‖/‖ref‖, for the last state ‖h − ref‖/‖peak‖ with peak the "
        "largest |h| the reference's state reached; 'worst grad' is the gradient with the "
        "largest error relative to its tolerance. " + (
            "Times: median ms of a call, calls back to back (triton.testing.do_bench); "
            "'ref ms' one call of the float64 reference's forward."
            if gpu else "Times: ms of one call in Triton's interpreter, which runs the kernels "
            "in numpy on the CPU: not their speed; 'ref ms' one call of the float64 reference's "
            "forward."), WIDTH))
    # 'worst grad' holds the longest gradient name, initial_state, and its error: 22 columns.
    header = (f"{'dtype':<8} {'case':<22} {'out err':>7} {'state err':>9} {'worst grad':>22} "
              f"{'fwd ms':>8} {'fwd+bwd ms':>10} {'ref ms':>7}")
    print(header)
    print("-" * len(header))
    worst = 0.0
    grad_worst = {}
    for name in args.dtype:
        dtype = DTYPES[name]
        (u, delta, A, B, C, D, z, bias, _), _ = scan_inputs(b, d, L, n, dtype=dtype,
                                                            device=device)
        pos = (u, delta, A, B, C, D, z, bias, True, True)
        for case, kw in _cases(d, n, L, b, device):
            out, state = selective_scan_ext(*pos, **kw)
            g_out, g_state = torch.randn_like(out).to(dtype), torch.randn_like(state)
            grads = _grads(selective_scan_ext, pos, kw, g_out, g_state)
            ms = _time(lambda: selective_scan_ext(*pos, **kw), gpu)
            ms_bwd = _time(lambda: _grads(selective_scan_ext, pos, kw, g_out, g_state), gpu)
            start = time.perf_counter()
            ref_out, ref_state, ref_peak = selective_scan_ref(
                *map(_double, pos), **{k: _double(v) for k, v in kw.items()},
                return_state_peak=True)
            if gpu:
                torch.cuda.synchronize()
            ref_ms = (time.perf_counter() - start) * 1e3
            ref_grads = _grads(selective_scan_ref, map(_double, pos),
                               {k: _double(v) for k, v in kw.items()}, g_out, g_state)
            err, serr = _rel(out, ref_out), state_error(state, ref_state, ref_peak)
            worst = max(worst, err / forward_tolerance(dtype), serr / forward_tolerance(dtype))
            ratios = {}
            for g, x in grads.items():
                e = _rel(x, ref_grads[g])
                key = (name, g)
                grad_worst[key] = max(grad_worst.get(key, 0.0), e)
                ratios[g] = e / grad_tolerance(g, dtype)
            g_name = max(ratios, key=ratios.get)
            worst = max(worst, ratios[g_name])
            worst_grad = f"{g_name} {ratios[g_name] * grad_tolerance(g_name, dtype):.2e}"
            print(f"{name:<8} {case:<22} {err:>7.1e} {serr:>9.1e} {worst_grad:>22} "
                  f"{ms:>8.3f} {ms_bwd:>10.3f} {ref_ms:>7.1f}")
    print("\nlargest gradient error over the cases (tolerance in brackets)")
    print(f"{'gradient':<14} " + " ".join(f"{name:>16}" for name in args.dtype))
    for g in dict.fromkeys(g for _, g in grad_worst):
        cells = [f"{grad_worst[(name, g)]:.1e} [{grad_tolerance(g, DTYPES[name]):.0e}]"
                 if (name, g) in grad_worst else "-" for name in args.dtype]
        print(f"{g:<14} " + " ".join(f"{c:>16}" for c in cells))
    ok = worst <= 1.0
    print(textwrap.fill(
        f"{'PASS' if ok else 'FAIL'}: largest error is {worst:.3f} of its tolerance (forward "
        "1e-5 float32, 1e-2 bfloat16/float16; gradients 1e-4 float32, and 2e-2 du, 5e-2 "
        "ddelta, 1e-2 the rest in bfloat16/float16)", WIDTH))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
