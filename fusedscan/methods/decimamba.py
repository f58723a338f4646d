"""DeciMamba (Ben-Kish et al., ICLR 2025): token importance scores, top-k selection and the
schedule of decimating layers. The selected positions are the scan's ``keep_idx``."""

import dataclasses
import math

import torch
import triton
import triton.language as tl

from fusedscan.utils.checks import (
    ACTIVATION_DTYPES, F64, check_dtype, check_param, check_tensor, param_dtypes,
)
from fusedscan.utils.device import INTERPRETED, check_devices
from fusedscan.utils.kernels import softplus


@triton.jit(do_not_specialize=["has_bias", "delta_softplus"])
def delta_norm_kernel(delta_ptr, delta_bias_ptr, scores_ptr, dim, L, has_bias, delta_softplus,
                      stride_b, stride_d, stride_l, stride_scores_b,
                      BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """Grid (⌈L / BLOCK_L⌉, batch): scores[b, t] = ‖Δ̂[b, :, t]‖₂ for BLOCK_L positions, reading
    every channel of them once."""
    b = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    col_ok = cols < L
    ACC = scores_ptr.dtype.element_ty
    src = delta_ptr + b * stride_b + cols.to(tl.int64)[None, :] * stride_l
    acc = tl.zeros([BLOCK_D, BLOCK_L], ACC)
    for d0 in range(0, dim, BLOCK_D):
        rows = d0 + tl.arange(0, BLOCK_D)
        mask = (rows < dim)[:, None] & col_ok[None, :]
        x = tl.load(src + rows.to(tl.int64)[:, None] * stride_d, mask=mask, other=0.0).to(ACC)
        x += tl.load(delta_bias_ptr + rows, mask=(rows < dim) & (has_bias != 0), other=0.0)[:, None]
        if delta_softplus:
            x = softplus(x)
        acc += tl.where(mask, x * x, 0.0)
    tl.store(scores_ptr + b * stride_scores_b + cols, tl.sqrt(tl.sum(acc, axis=0)), mask=col_ok)


def _check_delta(delta, delta_bias, delta_softplus):
    check_tensor("delta", delta)
    check_dtype("delta", delta, ACTIVATION_DTYPES + F64)
    if delta.dim() != 3 or 0 in delta.shape:
        raise ValueError(f"delta must be 3-D (batch, dim, L) with every size >= 1, got shape "
                         f"{tuple(delta.shape)}")
    if delta_bias is not None:
        params, _ = param_dtypes("delta", delta)
        check_param("delta_bias", delta_bias, (delta.shape[1],), "(dim,)", params)
    if not isinstance(delta_softplus, bool):
        raise TypeError(f"delta_softplus must be a bool, got {type(delta_softplus).__name__}")
    check_devices({"delta": delta, "delta_bias": delta_bias})


def decimation_scores(delta, delta_bias=None, delta_softplus=True):
    """DeciMamba's token importance: score[b, t] = ‖Δ̂[b, :, t]‖₂ over the channels.

    delta (batch, dim, L) float32, float16 or bfloat16; delta_bias (dim,) float32 or None;
    Δ̂ = delta + delta_bias, then softplus if delta_softplus (the scan's Δ̂ before delta_scale
    and delta_threshold). Returns (batch, L) float32 (float64 for float64 inputs). One Triton
    reduction that reads delta once."""
    _check_delta(delta, delta_bias, delta_softplus)
    if torch.compiler.is_compiling():
        return delta_norm_op(delta, delta_bias, delta_softplus)
    return delta_norm(delta, delta_bias, delta_softplus)


def delta_norm(delta, delta_bias, delta_softplus):
    """Launches delta_norm_kernel on checked inputs: scores (batch, L)."""
    batch, dim, L = delta.shape
    scores = torch.empty((batch, L), dtype=_score_dtype(delta), device=delta.device)
    block_d, block_l = (4, 16) if INTERPRETED else (16, 256)
    bias = delta_bias.contiguous() if delta_bias is not None else scores
    stride_b, stride_d, stride_l = delta.stride()
    delta_norm_kernel[(triton.cdiv(L, block_l), batch)](
        delta_ptr=delta, delta_bias_ptr=bias, scores_ptr=scores, dim=dim, L=L,
        has_bias=int(delta_bias is not None), delta_softplus=int(delta_softplus),
        stride_b=stride_b, stride_d=stride_d, stride_l=stride_l, stride_scores_b=scores.stride(0),
        BLOCK_D=block_d, BLOCK_L=block_l, num_warps=1 if INTERPRETED else 4)
    return scores


@torch.library.custom_op("fusedscan::delta_norm", mutates_args=())
def delta_norm_op(delta: torch.Tensor, delta_bias: torch.Tensor | None,
                  delta_softplus: bool) -> torch.Tensor:
    """delta_norm as a custom op, so that torch.compile traces it."""
    return delta_norm(delta, delta_bias, delta_softplus)


@delta_norm_op.register_fake
def _(delta, delta_bias, delta_softplus):
    return delta.new_empty(delta.shape[0], delta.shape[2], dtype=_score_dtype(delta))


def _score_dtype(delta):
    return torch.float64 if delta.dtype == torch.float64 else torch.float32


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def decimate(delta, delta_bias, k, keep_last=1, delta_softplus=True):
    """DeciMamba's token selection, every batch row on its own.

    Returns keep_idx (batch, K) int64 for ``selective_scan_ext``: the k positions with the
    highest ``decimation_scores`` among the first L − keep_last, in increasing order, followed
    by the last keep_last positions (the query / answer tokens are always kept); K = k +
    keep_last. When L − keep_last <= k every position is kept (K = L). Ties in score are broken
    by torch.topk. No host synchronisation."""
    _check_count("k", k, 0)
    _check_count("keep_last", keep_last, 0)
    if k + keep_last < 1:
        raise ValueError("k + keep_last must be >= 1: at least one position is kept")
    _check_delta(delta, delta_bias, delta_softplus)
    batch, _, L = delta.shape
    if keep_last > L:
        raise ValueError(f"keep_last must be <= L = {L}, got {keep_last}")
    positions = torch.arange(L, device=delta.device)
    head = L - keep_last
    if head <= k:
        return positions.expand(batch, L).contiguous()
    scores = decimation_scores(delta, delta_bias, delta_softplus)
    top = scores[:, :head].topk(k, dim=1, sorted=False).indices.sort(dim=1).values
    return torch.cat([top, positions[head:].expand(batch, keep_last)], dim=1)


@dataclasses.dataclass(frozen=True)
class DecimationSchedule:
    """Which layers decimate and how many tokens each keeps (DeciMamba's defaults for
    mamba-130m: layers (12,), L_base 2000, beta 0.5, min_seq_len 20).

    The s-th decimating layer (s = 0, 1, … in the order of ``layers``) keeps
    k_s = max(min(L − keep_last, ⌊L_base · beta^s⌋), min_seq_len) of the first L − keep_last
    positions it sees, plus the last keep_last."""

    layers: tuple = (12,)
    L_base: int = 2000
    beta: float = 0.5
    min_seq_len: int = 20
    keep_last: int = 1

    def __post_init__(self):
        layers = tuple(self.layers)
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
            raise TypeError(f"layers must be non-negative ints, got {self.layers!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers must not repeat a layer, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        _check_count("L_base", self.L_base, 1)
        _check_count("min_seq_len", self.min_seq_len, 1)
        _check_count("keep_last", self.keep_last, 0)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not (
                0 < self.beta <= 1):
            raise ValueError(f"beta must be a number in (0, 1], got {self.beta!r}")

    def num_kept(self, layer, L):
        """k for `layer` when it sees L positions; None when the layer does not decimate."""
        if layer not in self.layers:
            return None
        s = self.layers.index(layer)
        return max(min(L - self.keep_last, math.floor(self.L_base * self.beta ** s)),
                   self.min_seq_len)

    def select(self, layer, delta, delta_bias=None, delta_softplus=True):
        """keep_idx (batch, K) for `layer` from its delta (batch, dim, L), or None when the
        layer does not decimate."""
        check_tensor("delta", delta)
        k = self.num_kept(layer, delta.shape[-1])
        if k is None:
            return None
        return decimate(delta, delta_bias, k, min(self.keep_last, delta.shape[-1]),
                        delta_softplus)
