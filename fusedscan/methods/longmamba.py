"""LongMamba (Ye et al., ICLR 2025): global channels and their per-length Δ̂ thresholds, which
are the scan's ``delta_threshold``."""

import math
from collections.abc import Mapping

import torch

AGGREGATES = ("max", "mean")
_FORMAT = "fusedscan.LongMambaCalibration/2"
# Files of the first format have neither clamp_top nor min_length: they filter from T + 1.
_FORMAT_1 = "fusedscan.LongMambaCalibration/1"
# LongMamba's public code filters Δ̂ only from 3,000 tokens (its models are trained at 2,000).
MIN_LENGTH = 3000


def _by_layer(name, values):
    """{layer: value} from a mapping or a sequence (layer = position)."""
    if isinstance(values, Mapping):
        return dict(values)
    if isinstance(values, (list, tuple)):
        return dict(enumerate(values))
    raise TypeError(f"{name} must be a mapping layer -> value or a list with one value per layer, "
                    f"got {type(values).__name__}")


def _sequences(layer, value, dim):
    """The calibration Δ̂ of one layer as a (sequences, dim, T) float64 tensor."""
    what = f"delta_hats[{layer!r}]"
    if torch.is_tensor(value):
        seqs = value[None] if value.dim() == 2 else value
    elif isinstance(value, (list, tuple)) and value and all(torch.is_tensor(v) for v in value):
        if len({tuple(v.shape) for v in value}) != 1:
            raise ValueError(f"{what}: every calibration sequence must have the same shape "
                             f"(dim, T), got {sorted({tuple(v.shape) for v in value})}")
        seqs = torch.stack(list(value))
    else:
        raise TypeError(f"{what} must be a (dim, T) or (sequences, dim, T) tensor or a non-empty "
                        f"list of (dim, T) tensors")
    if seqs.dim() != 3 or seqs.shape[1] != dim or seqs.shape[2] < 1 or seqs.shape[0] < 1:
        raise ValueError(f"{what} must hold (dim, T) sequences with dim = {dim} (from A) and "
                         f"T >= 1, got shape {tuple(seqs.shape)}")
    if not seqs.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {seqs.dtype}")
    return seqs.double()


def log_decay(delta_hat, A, block=256):
    """log ∏_t mean_n exp(Δ̂_t[d]·A[d, n]) per channel: (dim,) float64 from Δ̂ (dim, T) and
    A (dim, N); in blocks of positions so that memory stays O(dim · N · block)."""
    A = A.double()
    total = torch.zeros(A.shape[0], dtype=torch.float64, device=delta_hat.device)
    for t0 in range(0, delta_hat.shape[1], block):
        x = delta_hat[:, t0:t0 + block, None].double() * A[:, None, :]
        total += (torch.logsumexp(x, dim=2) - math.log(A.shape[1])).sum(1)
    return total


def clamped_at_top(seqs, fraction):
    """Each (sequence, channel) row of seqs (sequences, dim, T) clamped from above at its k-th
    largest value, k = max(1, int(T · fraction)): LongMamba's clamp of calibration Δ̂."""
    k = max(1, int(seqs.shape[2] * fraction))
    return torch.minimum(seqs, seqs.topk(k, dim=2).values[..., -1:])


def _stretched(curves, S):
    """Linear interpolation of each row of curves (channels, T) at S evenly spaced points of
    [0, T − 1]."""
    T = curves.shape[1]
    if T == 1:
        return curves.expand(-1, S)
    pos = torch.arange(S, dtype=torch.float64, device=curves.device) * ((T - 1) / (S - 1))
    i0 = pos.floor().long().clamp(max=T - 2)
    w = pos - i0
    return curves[:, i0] * (1 - w) + curves[:, i0 + 1] * w


class LongMambaCalibration:
    """Global channels and their sorted calibration Δ̂ per layer; gives delta_threshold for any
    length. Built by ``calibrate_longmamba``; ``save`` / ``load`` keep it in a file.

    Attributes: training_length (T), theta, aggregate, clamp_top, min_length (see
    calibrate_longmamba), and per layer ``log_decays[layer]`` (dim,) float64 (aggregated log
    cumulative decay over T tokens) and ``curves[layer]`` (global channels, T) float64 (mean
    over sequences of each global channel's Δ̂ sorted in decreasing order)."""

    def __init__(self, training_length, theta, aggregate, log_decays, curves, clamp_top=None,
                 min_length=MIN_LENGTH):
        self.training_length = int(training_length)
        self.theta = float(theta)
        self.aggregate = aggregate
        self.clamp_top = None if clamp_top is None else float(clamp_top)
        self.min_length = int(min_length)
        self.log_decays = dict(log_decays)
        self.curves = dict(curves)
        for layer, curve in self.curves.items():
            if curve.shape != (int(self.global_mask(layer).sum()), self.training_length):
                raise ValueError(f"layer {layer!r}: curves must have shape (global channels, T)")
        self._cache = {}

    @property
    def layers(self):
        return tuple(self.log_decays)

    def global_mask(self, layer):
        """(dim,) bool: which channels of `layer` are global (decay over T tokens > theta)."""
        if layer not in self.log_decays:
            raise KeyError(f"layer {layer!r} was not calibrated; layers: {self.layers}")
        return self.log_decays[layer] > math.log(self.theta)

    def global_channels(self, layer):
        """Indices (int64) of the global channels of `layer`."""
        return self.global_mask(layer).nonzero().flatten()

    def summary(self):
        """{layer: (global channels, dim)}."""
        return {layer: (int(self.global_mask(layer).sum()), self.log_decays[layer].numel())
                for layer in self.layers}

    def delta_threshold(self, S, layer=0, device=None):
        """delta_threshold (dim,) float32 for a sequence of S positions: −inf for local channels
        and, when S <= T or S < min_length, for every channel; for a global channel, the value
        of its sorted calibration Δ̂ curve stretched to S points at the first index where the
        running sum exceeds the curve's total over T (−inf if it never does). Cached per
        (layer, S, device): the same tensor comes back each time (do not modify it)."""
        if isinstance(S, bool) or not isinstance(S, int) or S < 1:
            raise ValueError(f"S must be a positive int, got {S!r}")
        mask = self.global_mask(layer)
        device = torch.device(device) if device is not None else mask.device
        key = (layer, S, device)
        if key not in self._cache:
            thr = torch.full(mask.shape, -math.inf, dtype=torch.float64, device=mask.device)
            if S > self.training_length and S >= self.min_length and mask.any():
                thr[mask] = self._thresholds(self.curves[layer], S)
            self._cache[key] = thr.float().to(device)
        return self._cache[key]

    @staticmethod
    def _thresholds(curves, S, block=64):
        out = []
        for c in curves.split(block):
            stretched = _stretched(c, S)
            above = stretched.cumsum(1) > c.sum(1, keepdim=True)
            first = above.to(torch.int8).argmax(1)
            value = stretched.gather(1, first[:, None])[:, 0]
            out.append(torch.where(above.any(1), value, -math.inf))
        return torch.cat(out)

    def save(self, path):
        torch.save({"format": _FORMAT, "training_length": self.training_length,
                    "theta": self.theta, "aggregate": self.aggregate,
                    "clamp_top": self.clamp_top, "min_length": self.min_length,
                    "log_decays": {k: v.cpu() for k, v in self.log_decays.items()},
                    "curves": {k: v.cpu() for k, v in self.curves.items()}}, path)

    @classmethod
    def load(cls, path):
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or data.get("format") not in (_FORMAT, _FORMAT_1):
            raise ValueError(f"{path} is not a saved LongMambaCalibration ({_FORMAT})")
        return cls(data["training_length"], data["theta"], data["aggregate"],
                   data["log_decays"], data["curves"], data.get("clamp_top"),
                   data.get("min_length", data["training_length"] + 1))


def calibrate_longmamba(delta_hats, A, *, theta=0.05, aggregate="max", clamp_top=None,
                        min_length=MIN_LENGTH):
    """LongMamba's calibration from Δ̂ recorded on sequences of the training length T.

    delta_hats: per layer (a mapping layer -> value, or a list indexed by layer), the Δ̂ the
        scan sees (after bias and softplus) on each calibration sequence: a (dim, T) tensor, a
        (sequences, dim, T) tensor or a list of (dim, T) tensors.
    A: per layer, the same way, the layer's A = −exp(A_log), (dim, N).
    theta: a channel is global when its cumulative decay over T tokens,
        ∏_t mean_n exp(Δ̂_t[d] · A[d, n]), aggregated over the sequences, exceeds theta
        (default 0.05, the authors' default channel threshold c).
    aggregate: "max" (default) or "mean" of that decay over the sequences.
    clamp_top: None (default) or a fraction in (0, 1]: first clamp each sequence's Δ̂ in each
        channel at its k-th largest value, k = max(1, int(T · clamp_top)), for the decays,
        totals and curves alike (the authors' calibration, with 0.10, 0.15 or 0.20).
    min_length: delta_threshold filters only sequences of at least this many positions
        (default 3000, the authors' constant for models trained at 2,000 tokens; T + 1
        filters every sequence longer than the training length).

    The threshold curve of a global channel is the mean over sequences of its Δ̂ sorted in
    decreasing order. Computed in float64 on the tensors' device; returns a
    LongMambaCalibration."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < 1:
        raise ValueError(f"theta must be a number in (0, 1), got {theta!r}")
    if clamp_top is not None and (isinstance(clamp_top, bool)
                                  or not isinstance(clamp_top, (int, float))
                                  or not 0 < clamp_top <= 1):
        raise ValueError(f"clamp_top must be None or a fraction in (0, 1], got {clamp_top!r}")
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 1:
        raise ValueError(f"min_length must be a positive int, got {min_length!r}")
    deltas, As = _by_layer("delta_hats", delta_hats), _by_layer("A", A)
    if set(deltas) != set(As) or not deltas:
        raise ValueError(f"delta_hats and A must name the same, non-empty set of layers, got "
                         f"{sorted(deltas, key=repr)} and {sorted(As, key=repr)}")
    log_decays, curves, T = {}, {}, None
    for layer, value in deltas.items():
        A_l = As[layer]
        if not torch.is_tensor(A_l) or A_l.dim() != 2 or A_l.is_complex():
            raise ValueError(f"A[{layer!r}] must be a real (dim, N) tensor")
        seqs = _sequences(layer, value, A_l.shape[0]).to(A_l.device)
        if T is not None and seqs.shape[2] != T:
            raise ValueError(f"every layer must be calibrated on the same length T, got "
                             f"{seqs.shape[2]} for layer {layer!r} and {T} before")
        T = seqs.shape[2]
        if clamp_top is not None:
            seqs = clamped_at_top(seqs, clamp_top)
        per_seq = torch.stack([log_decay(s, A_l) for s in seqs])
        if aggregate == "max":
            log_decays[layer] = per_seq.max(0).values
        else:
            log_decays[layer] = torch.logsumexp(per_seq, 0) - math.log(per_seq.shape[0])
        mask = log_decays[layer] > math.log(theta)
        curves[layer] = seqs[:, mask].sort(dim=2, descending=True).values.mean(0)
    return LongMambaCalibration(T, theta, aggregate, log_decays, curves, clamp_top, min_length)
