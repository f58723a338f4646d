"""Mamba Modulation (Lu et al., NeurIPS 2025) and MambaExtend (Azizi et al., ICLR 2025): scaled
decay spectra and the calibration of their scales. The scales reach the scan as ``a_scale`` (or
``delta_scale``)."""

import math
import numbers
from typing import NamedTuple

import torch

FORMS = ("power", "linear")


def _check_form(A, s, form):
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if not torch.is_tensor(A) or A.dim() != 2 or not A.is_floating_point():
        raise TypeError("A must be a real floating (dim, N) tensor")
    if torch.is_tensor(s):
        if tuple(s.shape) not in ((), (A.shape[0],), tuple(A.shape)):
            raise ValueError(f"s must be a float, a 0-d tensor, (dim,) = {(A.shape[0],)} or "
                             f"(dim, N) = {tuple(A.shape)}, got {tuple(s.shape)}")
    elif isinstance(s, bool) or not isinstance(s, numbers.Real):
        raise TypeError(f"s must be a float or a tensor, got {type(s).__name__}")


def spectrum_a_scale(A, s, form="power"):
    """The scan's a_scale that turns A (dim, N), negative, into the scaled spectrum:
    power form A' = −exp(s · A_log) = −|A|^s, so a_scale = |A|^(s − 1); linear form A' = s · A,
    so a_scale = s. s: float, 0-d, (dim,) or (dim, N); differentiable in s (and A). Returns a
    float for a float s in the linear form, else a (dim, N) tensor in A's dtype."""
    _check_form(A, s, form)
    if torch.is_tensor(s) and s.dim() == 1:
        s = s[:, None]
    if form == "linear":
        return float(s) if not torch.is_tensor(s) else (s * torch.ones_like(A))
    return torch.exp((s - 1) * torch.log(-A))


def scale_spectrum(A, s, form="power"):
    """A' = A · spectrum_a_scale(A, s, form): −|A|^s (power) or s · A (linear), (dim, N)."""
    return A * spectrum_a_scale(A, s, form)


class ScaleSearch(NamedTuple):
    """Result of a scale calibration: the final scales and the loss at every iteration."""
    scales: torch.Tensor
    losses: list


def _start(init):
    if isinstance(init, numbers.Real) and not isinstance(init, bool):
        init = torch.tensor([float(init)], dtype=torch.float64)
    if not torch.is_tensor(init) or not init.is_floating_point() or init.numel() == 0:
        raise TypeError("init must be a float or a non-empty floating tensor of scales")
    return init.detach().clone()


def _clamp(x, bounds):
    return x if bounds is None else x.clamp(*bounds)


def _loss_value(loss_fn, x):
    value = loss_fn(x)
    value = float(value.detach()) if torch.is_tensor(value) else float(value)
    if not math.isfinite(value):
        raise FloatingPointError(f"loss_fn returned {value} at scales {x.tolist()}")
    return value


def calibrate_scales_spsa(loss_fn, init, *, iterations=100, a=0.05, c=0.05, alpha=0.602,
                          gamma=0.101, stability=None, bounds=None, generator=None):
    """Zeroth-order search of scales by SPSA (Spall), as Mamba Modulation and MambaExtend use.

    loss_fn(scales) -> float (or 0-d tensor): e.g. the perplexity of calibration data with
    layer l's a_scale (or delta_scale) set from scales[l]. Each iteration draws a Rademacher
    direction Δ (±1 per scale), evaluates the loss at scales ± c_k·Δ and steps
        scales ← scales − a_k · (L₊ − L₋) / (2 c_k) · Δ,
    with a_k = a / (k + 1 + stability)^alpha and c_k = c / (k + 1)^gamma (stability defaults to
    10% of iterations); ``bounds`` (lo, hi) clamps the scales and the probes. Two loss
    evaluations per iteration, no gradients. Returns ScaleSearch(scales, losses) with losses[k]
    the mean of the two probes of iteration k. ``generator`` makes the directions repeatable."""
    x = _start(init)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    if not (a > 0 and c > 0):
        raise ValueError(f"a and c must be positive, got a = {a}, c = {c}")
    stability = 0.1 * iterations if stability is None else stability
    losses = []
    with torch.no_grad():
        for k in range(iterations):
            a_k = a / (k + 1 + stability) ** alpha
            c_k = c / (k + 1) ** gamma
            direction = torch.randint(0, 2, x.shape, generator=generator).to(x) * 2 - 1
            plus = _loss_value(loss_fn, _clamp(x + c_k * direction, bounds))
            minus = _loss_value(loss_fn, _clamp(x - c_k * direction, bounds))
            x = _clamp(x - a_k * (plus - minus) / (2 * c_k) * direction, bounds)
            losses.append((plus + minus) / 2)
    return ScaleSearch(x, losses)


def calibrate_scales_gradient(loss_fn, init, *, steps=100, lr=0.01, optimizer=torch.optim.Adam,
                              bounds=None):
    """Gradient descent on the scales: loss_fn(scales) must return a differentiable 0-d tensor
    (the scan's backward pass gives the gradients of a_scale and delta_scale). ``optimizer`` is
    a torch.optim class built with lr; ``bounds`` (lo, hi) clamps after each step. Returns
    ScaleSearch(scales, losses), losses[k] the loss before step k."""
    x = _start(init).requires_grad_(True)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    opt = optimizer([x], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(x)
        if not torch.is_tensor(loss) or loss.dim() != 0 or not loss.requires_grad:
            raise TypeError("loss_fn must return a 0-d tensor that requires grad")
        loss.backward()
        opt.step()
        if bounds is not None:
            with torch.no_grad():
                x.clamp_(*bounds)
        losses.append(float(loss.detach()))
    return ScaleSearch(x.detach(), losses)
