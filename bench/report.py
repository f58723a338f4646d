"""Tables and a plot from the CSV of `pytest bench/ --benchmark-only --bench-csv FILE`.

usage: python bench/report.py FILE.csv --plot speed.png > tables.md

Ratios are speedups: the other implementation's time over fusedscan's (above 1: fusedscan is
faster), except the extension overhead (with extensions over without) and keep_idx's fraction
of the full-length scan (kept over full).
"""

import argparse
import csv
import sys
from collections import defaultdict


def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    times = defaultdict(dict)
    for r in rows:
        times[(r["group"], r["impl"], r["pass_"], r["dtype"], r["shape"], r.get("keep", ""))] = \
            float(r["gpu_ms"])
    return rows, times


def grid_rows(times):
    shapes = list(dict.fromkeys((k[3], k[4]) for k in times if k[0] == "grid"))
    out = []
    for dtype, shape in shapes:
        row = dict(dtype=dtype, shape=shape)
        for pass_ in ("forward", "forward_backward"):
            fused = times.get(("grid", "fusedscan", pass_, dtype, shape, ""))
            mamba = times.get(("grid", "mamba-ssm", pass_, dtype, shape, ""))
            ext = times.get(("extensions", "fusedscan+ext", pass_, dtype, shape, ""))
            row[pass_] = (fused, mamba, mamba / fused if fused and mamba else None,
                          ext / fused if fused and ext else None)
        out.append(row)
    return out


def fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


def tables(times):
    lines = ["| dtype | batch×dim×L | fusedscan fwd ms | mamba-ssm fwd ms | fwd speedup | "
             "fusedscan fwd+bwd ms | mamba-ssm fwd+bwd ms | fwd+bwd speedup | "
             "extensions fwd | extensions fwd+bwd |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in grid_rows(times):
        f, b = r["forward"], r["forward_backward"]
        lines.append(f"| {r['dtype']} | {r['shape']} | {fmt(f[0])} | {fmt(f[1])} | "
                     f"{fmt(f[2], 2)}× | {fmt(b[0])} | {fmt(b[1])} | {fmt(b[2], 2)}× | "
                     f"{fmt(f[3], 3)}× | {fmt(b[3], 3)}× |")
    lines += ["", "| batch×dim×L (bf16, forward) | kept | fusedscan keep_idx ms | fusedscan full "
              "ms | kept / full | gather + mamba-ssm ms | speedup over gather + mamba-ssm |",
              "|---|---|---|---|---|---|---|"]
    for key in sorted(k for k in times if k[0] == "keep_idx" and k[1] == "fusedscan"):
        _, _, pass_, dtype, shape, keep = key
        kept = times[key]
        full = times.get(("grid", "fusedscan", pass_, dtype, shape, ""))
        gathered = times.get(("keep_idx", "gather+mamba-ssm", pass_, dtype, shape, keep))
        lines.append(f"| {shape} | {keep} | {fmt(kept)} | {fmt(full)} | "
                     f"{fmt(kept / full if full else None, 3)}× | {fmt(gathered)} | "
                     f"{fmt(gathered / kept if gathered else None, 2)}× |")
    ref = [v for k, v in times.items() if k[0] == "reference"]
    if ref:
        lines += ["", f"Reference (PyTorch, float32, 8×1536×2048, forward): {ref[0]:.1f} ms."]
    return "\n".join(lines)


def plot(times, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = grid_rows(times)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, dtype in zip(axes, ("bfloat16", "float32")):
        mine = [r for r in rows if r["dtype"] == dtype]
        xs = range(len(mine))
        for offset, pass_, label in ((-0.2, "forward", "forward"),
                                     (0.2, "forward_backward", "forward + backward")):
            ys = [r[pass_][2] or 0 for r in mine]
            bars = ax.bar([x + offset for x in xs], ys, width=0.4, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(list(xs), [r["shape"] for r in mine], rotation=30, ha="right", fontsize=8)
        ax.set_title(dtype)
    axes[0].set_ylabel("speedup over mamba-ssm (its time / fusedscan's)")
    axes[0].legend()
    fig.suptitle("fusedscan selective_scan_ext vs mamba-ssm selective_scan_fn, H100, N = 16")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--plot", help="write the speedup bar chart (PNG) here")
    args = parser.parse_args()
    _, times = load(args.csv)
    print(tables(times))
    if args.plot:
        plot(times, args.plot)
        print(f"\nplot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
