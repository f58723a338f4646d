"""References for LongMamba's calibration: one channel at a time, in float64, with numpy's
interpolation."""

import math

import numpy as np


def channel_decay_ref(delta_hat, A, d):
    """∏_t mean_n exp(Δ̂_t[d] · A[d, n]) for channel d of one (dim, T) sequence (a float)."""
    a = A[d].double().cpu().numpy()
    decay = 1.0
    for x in delta_hat[d].double().cpu().numpy():
        decay *= float(np.mean(np.exp(x * a)))
    return decay


def global_channels_ref(sequences, A, theta, aggregate="max"):
    """[bool per channel]: the channel's decay, max or mean over the sequences, exceeds theta."""
    flags = []
    for d in range(A.shape[0]):
        decays = [channel_decay_ref(s, A, d) for s in sequences]
        value = max(decays) if aggregate == "max" else sum(decays) / len(decays)
        flags.append(value > theta)
    return flags


def clamped_row_ref(row, fraction):
    """One channel's calibration Δ̂ of one sequence (T values) with every value above its
    k-th largest, k = max(1, floor(T · fraction)), lowered to it."""
    values = [float(v) for v in row]
    bound = sorted(values, reverse=True)[max(1, int(len(values) * fraction)) - 1]
    return [min(v, bound) for v in values]


def channel_threshold_ref(values, S, min_length=1):
    """Threshold of one global channel for length S from its calibration Δ̂ values, one row of
    length T per sequence: the rows sorted in decreasing order and averaged, that curve
    interpolated at S evenly spaced points, and the value where the running sum first exceeds
    the curve's total; −inf if S <= T, S < min_length or it never does."""
    rows = [sorted((float(v) for v in row), reverse=True) for row in values]
    T = len(rows[0])
    curve = [sum(r[i] for r in rows) / len(rows) for i in range(T)]
    if S <= T or S < min_length:
        return -math.inf
    points = np.linspace(0.0, T - 1.0, S) if T > 1 else np.zeros(S)
    stretched = np.interp(points, np.arange(T, dtype=np.float64), np.array(curve))
    total, running = sum(curve), 0.0
    for v in stretched:
        running += v
        if running > total:
            return float(v)
    return -math.inf
