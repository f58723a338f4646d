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


def paired_times(fns, reps):
    """isolated_times for several functions at once, their calls interleaved (the order turned
    around every round) so that a drift of the machine's speed reaches them alike: {name:
    (walls, hosts)} for fns {name: fn}."""
    times = {name: ([], []) for name in fns}
    order = list(fns)
    for _ in range(reps):
        for name in order:
            walls, hosts = isolated_times(fns[name], 1)
            times[name][0].extend(walls)
            times[name][1].extend(hosts)
        order.reverse()
    return times


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
