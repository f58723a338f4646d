"""References for DeciMamba's scores and selection: one batch row and one position at a time."""

import torch

from .selective_scan import delta_hat


def decimation_scores_ref(delta, delta_bias=None, delta_softplus=True):
    """‖Δ̂[b, :, t]‖₂, computed in float64 from the widened inputs; (batch, L) float64."""
    dt = delta_hat(delta.double(), None if delta_bias is None else delta_bias.double(),
                   delta_softplus)
    return torch.stack([torch.stack([dt[b, :, t].square().sum().sqrt()
                                     for t in range(dt.shape[2])]) for b in range(dt.shape[0])])


def decimate_from_scores_ref(scores, k, keep_last=1):
    """The k best-scoring of the first L − keep_last positions (ties: the earlier position),
    increasing, then the last keep_last positions; every position when L − keep_last <= k."""
    batch, L = scores.shape
    head = L - keep_last
    rows = []
    for b in range(batch):
        if head <= k:
            rows.append(list(range(L)))
            continue
        ranked = sorted(range(head), key=lambda t: (-float(scores[b, t]), t))
        rows.append(sorted(ranked[:k]) + list(range(head, L)))
    return torch.tensor(rows, dtype=torch.int64)


def schedule_num_kept_ref(s, L, L_base, beta, min_seq_len, keep_last):
    """k_s of DeciMamba's schedule for the s-th decimating layer seeing L positions."""
    return max(min(L - keep_last, int(L_base * beta ** s)), min_seq_len)
