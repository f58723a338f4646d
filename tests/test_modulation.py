"""Spectrum scaling against reference/, and the SPSA / gradient calibration of scales."""

import math

import pytest
import torch

from fusedscan import (
    calibrate_scales_gradient, calibrate_scales_spsa, scale_spectrum, selective_scan_ext,
    spectrum_a_scale,
)
from reference import scale_spectrum_ref, selective_scan_ref
from tests.conftest import DEVICE, ON_GPU
from tests.helpers import make_case, rel_err, to_double

DIM, N = 6, 4


def scales(kind):
    return {"float": 0.7, "0-d": torch.tensor(0.7, device=DEVICE, dtype=torch.float64),
            "dim": 0.5 + torch.rand(DIM, device=DEVICE, dtype=torch.float64),
            "dim_n": 0.5 + torch.rand(DIM, N, device=DEVICE, dtype=torch.float64)}[kind]


@pytest.mark.parametrize("kind", ["float", "0-d", "dim", "dim_n"])
@pytest.mark.parametrize("form", ["power", "linear"])
def test_scale_spectrum(form, kind):
    A = -torch.exp(torch.randn(DIM, N, device=DEVICE, dtype=torch.float64))
    s = scales(kind)
    assert rel_err(scale_spectrum(A, s, form), scale_spectrum_ref(A, s, form)) <= 1e-14
    if form == "power":  # −|A|^s
        s_full = s if not torch.is_tensor(s) or s.dim() != 1 else s[:, None]
        assert rel_err(scale_spectrum(A, s, form), -(-A) ** s_full) <= 1e-14


@pytest.mark.parametrize("form", ["power", "linear"])
def test_scaled_scan_and_its_gradient_in_the_scale(form):
    """The scan with a_scale = spectrum_a_scale(A, s) equals the reference scan with the scaled
    A, and the gradient reaching s through the scan's backward pass matches the reference's."""
    shape = (2, 64, 301, 16) if ON_GPU else (1, DIM, 23, N)
    args, kwargs = make_case(*shape)
    grads = []
    for scan, convert in ((selective_scan_ext, lambda x: x), (selective_scan_ref, to_double)):
        s = torch.full((shape[1],), 0.8, device=DEVICE, requires_grad=True)
        A = convert(args[2])
        call = [convert(a) for a in args]
        if scan is selective_scan_ext:
            out = scan(*call, a_scale=spectrum_a_scale(A, s, form))
        else:
            call[2] = scale_spectrum_ref(A, convert(s), form)
            out = scan(*call)
        out.square().sum().backward()
        grads.append((out.detach(), s.grad))
    assert rel_err(grads[0][0], grads[1][0]) <= 1e-5
    assert rel_err(grads[0][1], grads[1][1]) <= 1e-4


def quadratic(target):
    return lambda x: ((x - target) ** 2).sum()


def test_spsa_finds_the_minimum_of_a_quadratic():
    target = torch.tensor([0.6, 1.3, 0.9], dtype=torch.float64)
    result = calibrate_scales_spsa(quadratic(target), torch.ones(3, dtype=torch.float64),
                                   iterations=300, a=0.2, c=0.05)
    assert (result.scales - target).abs().max() < 0.02
    assert len(result.losses) == 300 and result.losses[-1] < result.losses[0]


def test_spsa_is_repeatable_and_bounded():
    target = torch.tensor([0.2, 1.5], dtype=torch.float64)
    runs = [calibrate_scales_spsa(quadratic(target), 1.0 * torch.ones(2, dtype=torch.float64),
                                  iterations=40, bounds=(0.5, 1.2),
                                  generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0].scales, runs[1].scales) and runs[0].losses == runs[1].losses
    assert runs[0].scales.min() >= 0.5 and runs[0].scales.max() <= 1.2


def test_spsa_with_mambaextends_published_search():
    """MambaExtend's own search (docs/methods.md): a lower bound of 0.01 and none above,
    probes c / (k + 1)^0.1 with c = 0.1, a constant step (alpha = 0). A minimum below the bound
    ends at the bound; one above 1 is reached."""
    target = torch.tensor([-0.5, 1.6], dtype=torch.float64)
    start = torch.tensor([0.6, 0.7], dtype=torch.float64)
    result = calibrate_scales_spsa(quadratic(target), start, iterations=300, a=0.05, c=0.1,
                                   alpha=0, gamma=0.1, bounds=(0.01, None),
                                   generator=torch.Generator().manual_seed(0))
    assert result.scales[0] == 0.01
    assert 1.3 < result.scales[1] < 1.9  # a constant step keeps wandering around 1.6


def test_gradient_calibration_finds_the_minimum_of_a_quadratic():
    target = torch.tensor([0.6, 1.3], dtype=torch.float64)
    result = calibrate_scales_gradient(quadratic(target), torch.ones(2), steps=200, lr=0.05)
    assert (result.scales - target).abs().max() < 1e-2


@pytest.mark.parametrize("method", ["spsa", "gradient"])
def test_recovers_the_scale_of_a_scan(method):
    """End to end with the kernels: outputs made with the power form at s* = 0.6; calibrating s
    from 1 on the squared error recovers s*."""
    shape = (2, 64, 301, 16) if ON_GPU else (1, 4, 24, 3)
    args, _ = make_case(*shape, z=False)
    A = args[2]
    s_true = 0.6
    target = selective_scan_ext(*args, a_scale=spectrum_a_scale(A, s_true)).detach()

    def error(s):
        out = selective_scan_ext(*args, a_scale=spectrum_a_scale(A, s.float()))
        return (out - target).square().mean()

    start = error(torch.tensor(1.0, device=DEVICE)).detach()

    def loss(s):  # 1 at the start, about ((s − s*) / (1 − s*))² near s*
        return error(s[0]) / start

    if method == "spsa":
        result = calibrate_scales_spsa(loss, 1.0, iterations=40, a=0.1, c=0.05,
                                       bounds=(0.1, 2.0))
    else:
        result = calibrate_scales_gradient(loss, 1.0, steps=60, lr=0.05)
    assert abs(result.scales.item() - s_true) < 0.05, result


@pytest.mark.parametrize("call,exc", [
    (lambda: scale_spectrum(-torch.ones(DIM, N), 0.5, form="log"), ValueError),
    (lambda: scale_spectrum(-torch.ones(DIM, N), torch.ones(N), form="power"), ValueError),
    (lambda: scale_spectrum(-torch.ones(DIM, N), "0.5"), TypeError),
    (lambda: scale_spectrum(-torch.ones(DIM), 0.5), TypeError),
    (lambda: calibrate_scales_spsa(lambda x: 0.0, "1"), TypeError),
    (lambda: calibrate_scales_spsa(lambda x: 0.0, 1.0, iterations=0), ValueError),
    (lambda: calibrate_scales_spsa(lambda x: math.nan, 1.0), FloatingPointError),
    (lambda: calibrate_scales_gradient(lambda x: 1.0, 1.0), TypeError),
    (lambda: calibrate_scales_gradient(lambda x: x.sum(), 1.0, steps=0), ValueError),
])
def test_bad_input(call, exc):
    with pytest.raises(exc):
        call()
