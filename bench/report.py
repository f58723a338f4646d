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
        key = (r["group"], r["impl"], r["pass_"], r["dtype"], r["shape"], r.get("keep") or "")
        if r["group"] in ("latency", "model"):
            times[key] = {m: float(r[m]) for m in ("gpu_ms", "host_ms", "queued_ms") if r.get(m)}
        else:
            times[key] = float(r["gpu_ms"])
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
    lines += latency_table(times)
    lines += model_table(times)
    ref = [v for k, v in times.items() if k[0] == "reference"]
    if ref:
        lines += ["", f"Reference (PyTorch, float32, 8×1536×2048, forward): {ref[0]:.1f} ms."]
    return "\n".join(lines)


def latency_table(times):
    """Isolated calls: wall time, host time and queued (kernel) time, fusedscan and mamba-ssm."""
    keys = sorted({(k[2], k[4]) for k in times if k[0] == "latency"})
    if not keys:
        return []
    lines = ["", "| pass | batch×dim×L (bf16) | fusedscan isolated ms | mamba-ssm isolated ms | "
             "isolated ratio (mamba / fusedscan) | fusedscan host ms | mamba-ssm host ms | "
             "fusedscan queued ms | mamba-ssm queued ms |", "|---|---|---|---|---|---|---|---|---|"]
    for pass_, shape in keys:
        f = {m: times.get(("latency", "fusedscan", pass_, "bfloat16", shape, ""), {}).get(m)
             for m in ("gpu_ms", "host_ms", "queued_ms")}
        g = {m: times.get(("latency", "mamba-ssm", pass_, "bfloat16", shape, ""), {}).get(m)
             for m in ("gpu_ms", "host_ms", "queued_ms")}
        ratio = g["gpu_ms"] / f["gpu_ms"] if f["gpu_ms"] and g["gpu_ms"] else None
        lines.append(f"| {pass_} | {shape} | {fmt(f['gpu_ms'])} | {fmt(g['gpu_ms'])} | "
                     f"{fmt(ratio, 2)}× | {fmt(f['host_ms'])} | {fmt(g['host_ms'])} | "
                     f"{fmt(f['queued_ms'])} | {fmt(g['queued_ms'])} |")
    return lines


def model_table(times):
    """Whole-model prefill times per implementation and length."""
    impls = list(dict.fromkeys(k[1] for k in times if k[0] == "model"))
    shapes = sorted({k[4] for k in times if k[0] == "model"}, key=lambda s: int(s.split("x")[1]))
    if not impls:
        return []
    base = "mamba-ssm"
    lines = ["", "| tokens | " + " | ".join(f"{i} ms" for i in impls) + " | "
             + " | ".join(f"{base} / {i}" for i in impls if i != base) + " |",
             "|---|" + "---|" * (2 * len(impls) - 1)]
    for shape in shapes:
        ms = {i: times.get(("model", i, "forward", "bfloat16", shape, ""), {}).get("gpu_ms")
              for i in impls}
        ratios = [ms[base] / ms[i] if ms.get(base) and ms[i] else None
                  for i in impls if i != base]
        lines.append(f"| {shape.split('x')[1]} | " + " | ".join(fmt(ms[i]) for i in impls) + " | "
                     + " | ".join(f"{fmt(r, 2)}×" for r in ratios) + " |")
    return lines


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
    fig.suptitle("fusedscan selective_scan_ext vs mamba-ssm selective_scan_fn, N = 16")
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
