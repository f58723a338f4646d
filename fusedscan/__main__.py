"""python -m fusedscan: run every option of selective_scan_ext on this machine, compare with the
float64 reference and print a table of errors and timings.

On a CUDA GPU it runs natively; without one it runs on the CPU through Triton's interpreter at
a small default size (re-running itself with TRITON_INTERPRET=1, which must be set before
fusedscan is imported).
"""

import argparse
import os
import sys
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parse(argv):
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m fusedscan", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=256 if gpu else 8)
    p.add_argument("--seqlen", type=int, default=4099 if gpu else 67)
    p.add_argument("--dstate", type=int, default=16 if gpu else 4)
    p.add_argument("--dtype", choices=sorted(DTYPES), nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        os.execve(sys.executable, [sys.executable, "-m", "fusedscan", *argv],
                  dict(os.environ, TRITON_INTERPRET="1"))
    from fusedscan import selective_scan_ext
    from reference import selective_scan_ref

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    torch.manual_seed(args.seed)
    b, d, L, n = args.batch, args.dim, args.seqlen, args.dstate
    where = torch.cuda.get_device_name() if gpu else "CPU (Triton interpreter)"
    print(f"fusedscan on {where}; torch {torch.__version__}; batch={b} dim={d} L={L} N={n}; "
          "delta_softplus, D, z, delta_bias on; error = ‖out − ref‖/‖ref‖ against the float64 "
          "reference on the same rounded inputs")
    header = f"{'dtype':<9} {'case':<24} {'out err':>9} {'state err':>9} {'fusedscan ms':>13} {'reference ms':>13}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name in args.dtype:
        dtype = DTYPES[name]
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        u = torch.randn(b, d, L, device=device).to(dtype)
        delta = (0.7 * torch.randn(b, d, L, device=device) - 1.0).to(dtype)
        A = -(0.2 + 1.5 * torch.rand(d, n, device=device))
        B = torch.randn(b, n, L, device=device).to(dtype)
        C = torch.randn(b, n, L, device=device).to(dtype)
        D = torch.randn(d, device=device)
        z = torch.randn(b, d, L, device=device).to(dtype)
        bias = 0.3 * torch.randn(d, device=device)
        pos = (u, delta, A, B, C, D, z, bias, True, True)
        for case, kw in _cases(d, n, L, b, device):
            out, state = selective_scan_ext(*pos, **kw)
            ms = _time(lambda: selective_scan_ext(*pos, **kw), gpu)
            dbl = [x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in pos]
            dkw = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                   for k, v in kw.items()}
            start = time.perf_counter()
            ref_out, ref_state = selective_scan_ref(*dbl, **dkw)
            if gpu:
                torch.cuda.synchronize()
            ref_ms = (time.perf_counter() - start) * 1e3
            err = ((out.double() - ref_out).norm() / ref_out.norm()).item()
            serr = ((state.double() - ref_state).norm() / ref_state.norm()).item()
            worst = max(worst, err / tol, serr / tol)
            print(f"{name:<9} {case:<24} {err:>9.2e} {serr:>9.2e} {ms:>13.3f} {ref_ms:>13.1f}")
    ok = worst <= 1.0
    print(f"{'PASS' if ok else 'FAIL'}: largest error is {worst:.3f} of its tolerance "
          "(1e-5 float32, 1e-2 bfloat16/float16)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
