#!/usr/bin/env bash
# One call on the GPU machine: versions, the test suite, the main job and the forward sweep.
# Logs go to $OUT (or ./gpu-out); a short summary table is printed last.
# usage (repo root): bash bench/gpu_session.sh [pytest -k expression]
# SKIP_TESTS=1 / SKIP_SWEEP=1 leave out the test suite / the sweep.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/versions.txt"

t0=$(date +%s)
tests_rc=skipped
[ -n "${SKIP_TESTS:-}" ] || python3 -m pytest tests/ -q -p no:cacheprovider -n 16 --durations=12 --junitxml="$OUT/tests.xml" ${1:+-k "$1"} \
  > "$OUT/tests.log" 2>&1
[ -n "${SKIP_TESTS:-}" ] || tests_rc=$?
t1=$(date +%s)
python3 -m fusedscan > "$OUT/main.log" 2>&1
main_rc=$?
t2=$(date +%s)
if [ -z "${SKIP_SWEEP:-}" ]; then
  python3 bench/sweep_forward.py "$OUT/sweep_forward.csv" > "$OUT/sweep.log" 2>&1
fi
t3=$(date +%s)

if [ -f "$OUT/tests.log" ]; then
  echo "== tests ($((t1 - t0)) s, rc $tests_rc)"; tail -n 1 "$OUT/tests.log"
  grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
fi
echo "== main job ($((t2 - t1)) s, rc $main_rc)"; tail -n 22 "$OUT/main.log"
if [ -f "$OUT/sweep_forward.csv" ]; then
  echo "== forward sweep ($((t3 - t2)) s): best config per shape (ms)"
  python3 - "$OUT/sweep_forward.csv" <<'PY'
import csv, sys
best = {}
for r in csv.DictReader(open(sys.argv[1])):
    k = (r["dtype"], r["batch"], r["dim"], r["L"])
    if k not in best or float(r["ms"]) < float(best[k]["ms"]):
        best[k] = r
for k, r in best.items():
    print(f"{k[0]:>9} {k[1]}x{k[2]}x{k[3]:<7} {r['ms']:>8} ms  bd={r['block_d']} w={r['num_warps']} seg={r['segments']}  {r['gelem_per_s']} Gelem/s")
PY
fi
