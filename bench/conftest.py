"""Speed benchmarks of selective_scan_ext against mamba-ssm's CUDA scan and the reference.

Run on the GPU machine: `pytest bench/ --benchmark-only [--bench-csv FILE]`. Every measurement
is GPU-synchronised: CUDA events around each call (triton.testing.do_bench inside a pedantic
benchmark), after warm-up, median of many calls, rotating over several input sets. The median
goes to the benchmark's extra_info (`gpu_ms`) and to the CSV; the times pytest-benchmark
prints are those of whole do_bench rounds.
Without a GPU, or without mamba-ssm built (bench/mamba_ssm_cuda.py), the affected benchmarks
skip and say why.
"""

import functools
import itertools
import os
import statistics
import sys

import pytest
import torch
import triton.testing

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)

import mamba_ssm_cuda  # noqa: E402
import scan_cases  # noqa: E402
from timing import paired_times, write_csv  # noqa: E402

ROWS = []


def pytest_addoption(parser):
    parser.addoption("--bench-csv", default=None,
                     help="write every benchmark's GPU median (ms) and case to this CSV")
    parser.addoption("--bench-compile-jobs", type=int, default=8,
                     help="processes that compile the kernels before the first benchmark "
                          "(1: compile as they come)")


@pytest.fixture(scope="session")
def gpu(request):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: speed is measured on the GPU only")
    jobs = request.config.getoption("--bench-compile-jobs")
    if jobs > 1:
        # Compiling each kernel variant takes tens of seconds; do them side by side first.
        scan_cases.compile_all(jobs)
    return torch.device("cuda")


@pytest.fixture(scope="session")
def mamba_or_why(gpu):
    """(mamba-ssm's selective_scan_fn, None), or (None, why it is not available)."""
    try:
        return mamba_ssm_cuda.load(), None
    except mamba_ssm_cuda.Unavailable as e:
        return None, str(e)


@pytest.fixture(scope="session")
def mamba(mamba_or_why):
    fn, why = mamba_or_why
    if fn is None:
        pytest.skip(f"mamba-ssm not available: {why}")
    return fn


@pytest.fixture
def measure(benchmark, request):
    """measure(fn, sets, **case): GPU time of fn(s), s cycling over the input sets; returns the
    median in ms and records it with the case's fields. Each pedantic round is one
    triton.testing.do_bench (CUDA events around every call, calls queued back to back, L2
    flushed between them, warm-up first); the result is the median of the rounds' medians."""
    def run(fn, sets, rounds=3, **case):
        cycle = itertools.cycle(sets)
        medians = []

        def one_round():
            medians.append(triton.testing.do_bench(lambda: fn(next(cycle)), warmup=25, rep=200,
                                                   return_mode="median"))

        benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=1)
        ms = statistics.median(medians[1:])
        benchmark.extra_info.update(case, gpu_ms=ms)
        ROWS.append(dict(case, test=request.node.name, gpu_ms=round(ms, 4), rounds=rounds,
                         input_sets=len(sets)))
        return ms
    return run


@pytest.fixture
def measure_isolated(benchmark, request):
    """measure_isolated(fns, sets, reps, **case): the wall time of one call as a model layer makes
    it (synchronize, fn(s), synchronize) for each fn of fns ({impl: fn}), median over reps calls
    cycling over the input sets after two warm-up calls, recorded as gpu_ms, one row per impl;
    with host=True also host_ms (call to return with the queue drained: the host's own cost)
    and queued_ms (do_bench, calls back to back: the kernels' own time). Several fns have their
    calls interleaved (timing.paired_times): a drift of the host's speed, which moves a call's
    host time by tens of percent between tests, reaches them alike."""
    def run(fns, sets, reps=50, host=False, group=None, **case):
        cycle = itertools.cycle(sets)
        calls = {}
        for impl, fn in fns.items():
            fn(next(cycle))
            fn(next(cycle))
            calls[impl] = functools.partial(lambda fn: fn(next(cycle)), fn)
        for impl, (walls, hosts) in paired_times(calls, reps).items():
            row = dict(group=group, impl=impl, **case, test=request.node.name,
                       gpu_ms=round(1e3 * statistics.median(walls), 4), rounds=reps,
                       input_sets=len(sets))
            if host:
                row["host_ms"] = round(1e3 * statistics.median(hosts), 4)
                row["queued_ms"] = round(triton.testing.do_bench(
                    calls[impl], warmup=25, rep=100, return_mode="median"), 4)
            benchmark.extra_info[impl] = row
            ROWS.append(row)
        benchmark.pedantic(lambda: None, rounds=1)
    return run


def pytest_sessionfinish(session):
    path = session.config.getoption("--bench-csv")
    if path and ROWS:
        write_csv(path, ROWS)
