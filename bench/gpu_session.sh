#!/usr/bin/env bash
# GPU machine session: runs the named steps in order, logs each to $OUT/<step>.log (or
# ./gpu-out) and prints a short summary last.
# usage (repo root): bash bench/gpu_session.sh STEP...   (default: all steps)
#   tests-fwd     pytest tests/test_selective_scan.py tests/test_validation.py
#   tests-bwd     pytest tests/test_backward.py
#   tests-methods pytest of the decode step, the methods (DeciMamba, LongMamba, modulation),
#                 docs/methods.md's examples, the argument checks and the custom ops (opcheck,
#                 torch.compile, CUDA graph of a step)
#   tests-models  pytest tests/test_models.py: patched transformers and mamba-ssm models (builds
#                 mamba-ssm's selective_scan_cuda from .mamba-ssm/ first, unless built, and
#                 imports mamba-ssm from its extracted sources)
#   main          python -m fusedscan (forward and gradient errors against the reference)
#   mamba         build mamba-ssm's selective_scan_cuda from .mamba-ssm/ (bench/mamba_ssm_cuda.py)
#   bench         pytest bench/ --benchmark-only (builds mamba-ssm beside compiling the kernels,
#                 unless built), then bench/report.py: bench.csv, tables.md, speed.png;
#                 BENCH_K narrows the benchmarks (pytest -k)
#   coldstart     bench/cold_start.py: first-call compile times with an empty Triton cache, and
#                 after python -m fusedscan.warmup
#   host          bench/host_profile.py: where the host time of one call goes
# A build of selective_scan_cuda that an earlier call brought back, compressed as
# .mamba-ssm/selective_scan_cuda.so.xz (ignored, carried), is unpacked instead of building.
#   memory        bench/backward_memory.py at 1×1536×32768 bf16 (needs `mamba` for the comparison)
#   sweep         bench/sweep_forward.py (launch configurations, three shapes); SWEEP_ARGS adds
#                 its options (e.g. "--tiles --forward-only --shapes 1x1536x512")
#   profile-model bench/model_cases.py --profile at 2048 and 32768 tokens: mamba-ssm's model
#                 and the patched one, with torch.profiler's operator tables
# PYTEST_K narrows the test steps (pytest -k).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tests-fwd tests-bwd tests-methods main bench memory)
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, 'cuda', torch.version.cuda)"
  python3 -c "import transformers; print('transformers', transformers.__version__)" || true
} 2>&1 | tee "$OUT/versions.txt"

pytest_run() {
  python3 -m pytest "$@" -q -p no:cacheprovider -n 16 --durations=8 ${PYTEST_K:+-k "$PYTEST_K"}
}

if [ -f .mamba-ssm/selective_scan_cuda.so.xz ] && ! ls .mamba-ssm/build/selective_scan_cuda*.so > /dev/null 2>&1; then
  mkdir -p .mamba-ssm/build && xz -dc .mamba-ssm/selective_scan_cuda.so.xz > .mamba-ssm/build/selective_scan_cuda.so
fi
[ -d .mamba-ssm/mamba_ssm-2.3.2.post1 ] || [ ! -f .mamba-ssm/mamba_ssm-2.3.2.post1.tar.gz ] ||
  tar -C .mamba-ssm -xzf .mamba-ssm/mamba_ssm-2.3.2.post1.tar.gz

summary=()
for step in "${steps[@]}"; do
  t0=$(date +%s)
  case $step in
    tests-fwd) pytest_run tests/test_selective_scan.py tests/test_validation.py --junitxml="$OUT/tests-fwd.xml" ;;
    tests-bwd) pytest_run tests/test_backward.py --junitxml="$OUT/tests-bwd.xml" ;;
    tests-methods) pytest_run tests/test_state_update.py tests/test_decimamba.py \
        tests/test_longmamba.py tests/test_modulation.py tests/test_docs.py tests/test_compile.py \
        tests/test_validation.py --junitxml="$OUT/tests-methods.xml" ;;
    tests-models)
      { ls .mamba-ssm/build/selective_scan_cuda*.so > /dev/null 2>&1 ||
          python3 bench/mamba_ssm_cuda.py build; } &&
        { export PYTHONPATH=$PWD:$PWD/.mamba-ssm/build:$PWD/.mamba-ssm/mamba_ssm-2.3.2.post1
          pytest_run tests/test_models.py -rfEs --junitxml="$OUT/tests-models.xml"; } ;;
    main) python3 -m fusedscan ;;
    mamba) python3 bench/mamba_ssm_cuda.py build ;;
    bench)
      if ! ls .mamba-ssm/build/selective_scan_cuda*.so > /dev/null 2>&1; then
        python3 bench/mamba_ssm_cuda.py build > "$OUT/mamba.log" 2>&1 &
      fi
      python3 bench/scan_cases.py compile && wait &&
        python3 -m pytest bench/ --benchmark-only -q -p no:cacheprovider -rs \
          --bench-csv "$OUT/bench.csv" --bench-compile-jobs 1 ${BENCH_K:+-k "$BENCH_K"} &&
        python3 bench/report.py "$OUT/bench.csv" --plot "$OUT/speed.png" > "$OUT/tables.md" ;;
    memory) python3 bench/backward_memory.py --csv "$OUT/backward_memory.csv" ;;
    coldstart) python3 bench/cold_start.py ;;
    host) python3 bench/host_profile.py --csv "$OUT/host.csv" ;;
    sweep) python3 bench/sweep_forward.py "$OUT/sweep_forward.csv" ${SWEEP_ARGS:-} ;;
    profile-model)
      { ls .mamba-ssm/build/selective_scan_cuda*.so > /dev/null 2>&1 ||
          python3 bench/mamba_ssm_cuda.py build; } &&
        python3 bench/model_cases.py --lengths 2048 32768 --impls mamba-ssm fusedscan --profile \
          --csv "$OUT/model_profile.csv" ;;
    *) echo "unknown step $step"; false ;;
  esac > "$OUT/$step.log" 2>&1
  rc=$?
  summary+=("== $step: rc $rc, $(( $(date +%s) - t0 )) s")
done

for i in "${!steps[@]}"; do
  step=${steps[$i]}
  echo "${summary[$i]}"
  case $step in
    tests-*) tail -n 1 "$OUT/$step.log"; grep -E "^(FAILED|ERROR|SKIPPED)" "$OUT/$step.log" | head -20 ;;
    main) tail -n 5 "$OUT/$step.log" ;;
    mamba) tail -n 2 "$OUT/$step.log" ;;
    memory) tail -n 4 "$OUT/$step.log" ;;
    coldstart) tail -n 3 "$OUT/$step.log" ;;
    host) tail -n 30 "$OUT/$step.log" ;;
    bench) grep -E "passed|failed|SKIPPED" "$OUT/$step.log" | tail -n 5; cat "$OUT/tables.md" ;;
    sweep) tail -n 14 "$OUT/$step.log" ;;
    profile-model) grep "^{" "$OUT/$step.log" ;;
  esac
done
