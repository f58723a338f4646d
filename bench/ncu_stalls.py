"""Where one kernel's warps wait, from an Nsight Compute report's source page: the stall reasons'
shares of all samples, the instructions with the most samples, the samples by opcode, and the
loads and stores that request the most excess L2 sectors (sectors a fully coalesced access
would not touch).

    ncu --set full --import-source no -k regex:NAME -c 1 -o prof python3 script.py
    ncu -i prof.ncu-rep --page source --csv --print-source sass > source.csv
    python bench/ncu_stalls.py source.csv [more.csv ...] [--top 8]

Several exports are summarized one after another (e.g. two variants of a kernel). The shares
are of the samples of the one kernel in each export.
"""

import argparse
import collections
import csv

SAMPLES = "Warp Stall Sampling (All Samples)"
EXCESS = "L2 Theoretical Sectors Global Excessive"
SECTORS = "L2 Theoretical Sectors Global"
LOCAL = "L2 Theoretical Sectors Local"


def _number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def read_source(path):
    """The SASS rows of an export: one dict per instruction, the stall and sector columns as
    floats, the others as written."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    header = next(i for i, line in enumerate(lines) if "Source" in line and SAMPLES in line)
    names = lines[header]
    numeric = {SAMPLES, EXCESS, SECTORS, LOCAL} | {k for k in names if k.startswith("stall_")}
    return [{k: _number(v) if k in numeric else v for k, v in zip(names, line)}
            for line in lines[header + 1:] if len(line) == len(names)]


def opcode(sass):
    words = sass.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else "?"


def summary(rows, top=8):
    """The summary's lines for one export."""
    total = sum(r[SAMPLES] for r in rows) or 1.0
    reasons = collections.Counter()
    for r in rows:
        for k, v in r.items():
            if k.startswith("stall_") and "Not Issued" not in k:
                reasons[k[len("stall_"):]] += v
    by_op = collections.Counter()
    for r in rows:
        by_op[opcode(r["Source"])] += r[SAMPLES]
    sectors = sum(r.get(SECTORS, 0.0) for r in rows)
    excess = sum(r.get(EXCESS, 0.0) for r in rows)
    local = sum(r.get(LOCAL, 0.0) for r in rows)
    out = [f"samples {total:.0f}; global L2 sectors {sectors / 1e6:.1f}M, of them excess "
           f"{excess / 1e6:.1f}M; local {local / 1e6:.1f}M",
           "stall reasons: " + ", ".join(f"{k} {100 * v / total:.1f}%"
                                         for k, v in reasons.most_common(top)),
           "by opcode: " + ", ".join(f"{k} {100 * v / total:.1f}%"
                                     for k, v in by_op.most_common(top)),
           "instructions with the most samples (share, long scoreboard samples, SASS):"]
    for r in sorted(rows, key=lambda r: -r[SAMPLES])[:top]:
        out.append(f"  {100 * r[SAMPLES] / total:5.1f}%  {r.get('stall_long_sb', 0.0):8.0f}  "
                   f"{r['Source'].strip()}")
    out.append("accesses with the most excess L2 sectors (millions, SASS):")
    for r in sorted(rows, key=lambda r: -r.get(EXCESS, 0.0))[:top]:
        if r.get(EXCESS, 0.0) > 0:
            out.append(f"  {r[EXCESS] / 1e6:7.1f}  {r['Source'].strip()}")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("exports", nargs="+", help="CSV exports of ncu's source page (SASS)")
    parser.add_argument("--top", type=int, default=8, help="rows per list (default %(default)s)")
    args = parser.parse_args(argv)
    for path in args.exports:
        print(f"== {path}")
        print("\n".join(summary(read_source(path), args.top)))


if __name__ == "__main__":
    main()
