"""Random inputs of the scan, as the tests, the benchmarks and `python -m fusedscan` draw them:
u, z, B, C ~ N(0, 1); delta = 0.7·N(0, 1) − 1 (Δ̂ = softplus(delta + bias) about 0.1–1, as in
trained Mamba layers); A = −(0.2 + 1.5·U(0, 1)); D ~ N(0, 1); delta_bias = 0.3·N(0, 1)."""

import math

import torch

from .selective_scan import delta_hat


def make_bc(kind, batch, dim, dstate, L, dtype, groups=2, device="cpu"):
    """B or C of a kind: "fixed" (dim, N) float32, "variable" (batch, N, L) or "grouped"
    (batch, G, N, L)."""
    if kind == "fixed":
        return torch.randn(dim, dstate, device=device)
    if kind == "variable":
        return torch.randn(batch, dstate, L, device=device).to(dtype)
    return torch.randn(batch, groups, dstate, L, device=device).to(dtype)


def thresholds_between_values(dt, lo=0.2, hi=0.4):
    """Per-channel thresholds in the middle of the widest gap between distinct observed Δ̂
    values whose rank lies in [lo, hi) of the channel (so float32 and float64 agree on every
    comparison), filtering about 30% of the tokens; every other channel gets −inf."""
    thr = torch.full((dt.shape[1],), -math.inf, dtype=torch.float64)
    for d in range(0, dt.shape[1], 2):
        vals = dt[:, d].reshape(-1).double().unique()  # sorted, distinct
        if vals.numel() > 1:
            a = min(int(lo * vals.numel()), vals.numel() - 2)
            b = max(min(int(hi * vals.numel()), vals.numel() - 1), a + 1)
            k = a + int((vals[a + 1:b + 1] - vals[a:b]).argmax())
            thr[d] = (vals[k] + vals[k + 1]) / 2
    return thr.float().to(dt.device)


def scan_inputs(batch, dim, L, dstate, *, dtype=torch.float32, B_kind="variable", C_kind="variable",
              groups=2, D=True, z=True, delta_bias=True, delta_softplus=True,
              initial_state=False, delta_scale=None, a_scale=None, delta_threshold=False,
              keep=None, device="cpu"):
    """Random inputs for selective_scan_ext as (args, kwargs): args are u, delta, A, B, C, D,
    z, delta_bias, delta_softplus (absent ones None). delta_scale: None, "float" or "tensor";
    a_scale: None, "float", "dim" or "dim_n"; delta_threshold: False, True (per-channel values
    between observed Δ̂, every other channel unfiltered: for exact comparisons) or a float (the
    same threshold for every channel); keep: None or the number K of kept positions per row."""
    dev = device
    u = torch.randn(batch, dim, L, device=dev).to(dtype)
    if delta_softplus:
        delta = (0.7 * torch.randn(batch, dim, L, device=dev) - 1.0).to(dtype)
    else:
        delta = (0.5 * torch.rand(batch, dim, L, device=dev)).to(dtype)
    A = -(0.2 + 1.5 * torch.rand(dim, dstate, device=dev))
    B = make_bc(B_kind, batch, dim, dstate, L, dtype, groups, dev)
    C = make_bc(C_kind, batch, dim, dstate, L, dtype, groups, dev)
    kwargs = {}
    args = [u, delta, A, B, C,
            torch.randn(dim, device=dev) if D else None,
            torch.randn(batch, dim, L, device=dev).to(dtype) if z else None,
            # Without softplus a negative Δ̂ would make the state grow without bound.
            (0.3 * torch.randn(dim, device=dev) if delta_softplus
             else 0.3 * torch.rand(dim, device=dev)) if delta_bias else None,
            delta_softplus]
    if initial_state:
        kwargs["initial_state"] = torch.randn(batch, dim, dstate, device=dev)
    if delta_scale == "float":
        kwargs["delta_scale"] = 0.7
    elif delta_scale == "tensor":
        kwargs["delta_scale"] = 0.5 + torch.rand(dim, device=dev)
    if a_scale == "float":
        kwargs["a_scale"] = 0.8
    elif a_scale == "dim":
        kwargs["a_scale"] = 0.5 + torch.rand(dim, device=dev)
    elif a_scale == "dim_n":
        kwargs["a_scale"] = 0.5 + torch.rand(dim, dstate, device=dev)
    if delta_threshold is not False and not isinstance(delta_threshold, bool):
        kwargs["delta_threshold"] = torch.full((dim,), float(delta_threshold), device=dev)
    elif delta_threshold:
        dt = delta_hat(delta.double(), None if args[7] is None else args[7].double(),
                       delta_softplus, kwargs.get("delta_scale"))
        kwargs["delta_threshold"] = thresholds_between_values(dt)
    if keep is not None:
        kwargs["keep_idx"] = torch.stack(
            [torch.randperm(L, device=dev)[:keep].sort().values for _ in range(batch)])
    return args, kwargs
