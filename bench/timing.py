"""Timing helpers of the GPU scripts: calls the way a model makes them, and CSV output."""

import csv
import statistics
import time

import torch


def isolated_times(fn, reps):
    """For reps calls of fn(), each with the GPU idle before it: (wall times to the end of its
    GPU work, host times to its return), in seconds."""
    walls, hosts = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - t0)
        hosts.append(t1 - t0)
    return walls, hosts


def isolated_ms(fn, reps=200):
    """Median wall time of one call with the GPU idle before and after (ms)."""
    return 1e3 * statistics.median(isolated_times(fn, reps)[0])


def host_ms(fn, reps=500):
    """Median time from a call to its return with the GPU idle before it (ms)."""
    return 1e3 * statistics.median(isolated_times(fn, reps)[1])


def write_csv(path, rows):
    """rows (dicts) to a CSV file, the columns of all rows in order of first appearance."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
