"""LongMamba calibration against reference/: global channels, decays, thresholds, files."""

import math

import pytest
import torch

from fusedscan import LongMambaCalibration, calibrate_longmamba
from reference import (
    channel_decay_ref, channel_threshold_ref, clamped_row_ref, global_channels_ref,
)
from tests.conftest import DEVICE

DIM, N, T, SEQS = 8, 4, 40, 3


def calibration_data(layers=2):
    """Δ̂ (sequences, dim, T) per layer: even channels with small Δ̂ (slow decay, global), odd
    ones with large Δ̂ (local); A = −exp(A_log) (dim, N)."""
    deltas, As = [], []
    for _ in range(layers):
        scale = torch.where(torch.arange(DIM) % 2 == 0, 0.002, 0.5).to(DEVICE)
        deltas.append(torch.rand(SEQS, DIM, T, device=DEVICE).square() * 2 * scale[:, None])
        As.append(-torch.exp(torch.rand(DIM, N, device=DEVICE) * 2 - 1))
    return deltas, As


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_global_channels_and_decays(aggregate):
    deltas, As = calibration_data()
    theta = 0.5
    cal = calibrate_longmamba(deltas, As, theta=theta, aggregate=aggregate)
    assert cal.layers == (0, 1) and cal.training_length == T
    for layer in cal.layers:
        decays = torch.tensor([[channel_decay_ref(s, As[layer], d) for d in range(DIM)]
                               for s in deltas[layer]], dtype=torch.float64)
        agg = decays.max(0).values if aggregate == "max" else decays.mean(0)
        assert rel_err_log(cal.log_decays[layer].cpu(), agg) <= 1e-10
        expected = global_channels_ref(list(deltas[layer]), As[layer], theta, aggregate)
        assert cal.global_mask(layer).tolist() == expected
        assert 0 < sum(expected) < DIM  # the data has both kinds
        assert cal.global_channels(layer).tolist() == [d for d in range(DIM) if expected[d]]
    assert cal.summary() == {layer: (sum(global_channels_ref(list(deltas[layer]), As[layer],
                                                               theta, aggregate)), DIM)
                             for layer in cal.layers}


def test_theta_defaults_to_the_authors_channel_threshold():
    """LongMamba's public code takes a channel as global above c = 5e-2 unless told otherwise
    (docs/methods.md)."""
    deltas, As = calibration_data()
    cal = calibrate_longmamba(deltas, As)
    assert cal.theta == 0.05
    for layer in cal.layers:
        assert cal.global_mask(layer).tolist() == global_channels_ref(list(deltas[layer]),
                                                                      As[layer], 0.05, "max")


def rel_err_log(log_x, ref):
    """Relative error of exp(log_x) against ref, in log space where ref underflows."""
    return float((log_x - ref.log()).abs().max())


@pytest.mark.parametrize("S", [T + 1, 2 * T + 3, 16 * T, 301])
def test_thresholds(S):
    deltas, As = calibration_data()
    cal = calibrate_longmamba(deltas, As, theta=0.5, min_length=T + 1)
    for layer in cal.layers:
        thr = cal.delta_threshold(S, layer)
        assert thr.dtype == torch.float32 and thr.shape == (DIM,)
        mask = cal.global_mask(layer)
        for d in range(DIM):
            if mask[d]:
                expected = channel_threshold_ref(deltas[layer][:, d].cpu(), S)
                assert math.isfinite(expected)
                assert thr[d].item() == pytest.approx(expected, rel=1e-6)
            else:
                assert thr[d].item() == -math.inf


@pytest.mark.parametrize("S", [1, T - 1, T])
def test_no_threshold_up_to_the_training_length(S):
    deltas, As = calibration_data()
    thr = calibrate_longmamba(deltas, As, theta=0.5, min_length=1).delta_threshold(S, 1)
    assert torch.all(thr == -math.inf)


@pytest.mark.parametrize("min_length", [None, 100])
def test_filtering_starts_at_min_length(min_length):
    """Below min_length nothing is filtered; from it on, the thresholds are the reference's.
    By default min_length is 3000, LongMamba's public code's constant (docs/methods.md)."""
    deltas, As = calibration_data()
    kw = {} if min_length is None else {"min_length": min_length}
    cal = calibrate_longmamba(deltas, As, theta=0.5, **kw)
    start = 3000 if min_length is None else min_length
    assert cal.min_length == start
    for layer in cal.layers:
        assert torch.all(cal.delta_threshold(start - 1, layer) == -math.inf)
        thr = cal.delta_threshold(start, layer)
        for d in cal.global_channels(layer).tolist():
            expected = channel_threshold_ref(deltas[layer][:, d].cpu(), start, start)
            assert math.isfinite(expected)
            assert thr[d].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("clamp_top", [0.1, 0.25, 1.0])
def test_clamp_of_the_calibration_delta(clamp_top):
    """clamp_top clamps each sequence's Δ̂ per channel at its top-fraction value before the
    decays, the global channels and the curves (LongMamba's calibration)."""
    deltas, As = calibration_data()
    S = 5 * T
    cal = calibrate_longmamba(deltas, As, theta=0.5, clamp_top=clamp_top, min_length=T + 1)
    plain = calibrate_longmamba(deltas, As, theta=0.5, min_length=T + 1)
    assert cal.clamp_top == clamp_top
    for layer in cal.layers:
        clamped = torch.tensor([[clamped_row_ref(s[d].cpu(), clamp_top) for d in range(DIM)]
                                for s in deltas[layer]], dtype=torch.float64)
        A = As[layer].cpu()
        decays = torch.tensor([[channel_decay_ref(s, A, d) for d in range(DIM)]
                               for s in clamped], dtype=torch.float64)
        assert rel_err_log(cal.log_decays[layer].cpu(), decays.max(0).values) <= 1e-10
        assert cal.global_mask(layer).tolist() == global_channels_ref(list(clamped), A, 0.5)
        thr = cal.delta_threshold(S, layer)
        for d in cal.global_channels(layer).tolist():
            expected = channel_threshold_ref(clamped[:, d], S)
            assert thr[d].item() == pytest.approx(expected, rel=1e-6)
        if clamp_top < 1:  # the clamp changes the thresholds
            common = cal.global_mask(layer) & plain.global_mask(layer)
            assert common.any()
            assert not torch.equal(thr[common], plain.delta_threshold(S, layer)[common])


def test_kept_tokens_carry_the_training_total():
    """On a new sequence of length S from the calibration distribution, the tokens above the
    threshold carry about the training-length total of Δ̂ (what the threshold is for)."""
    dim, T_, S = 16, 2000, 4000
    gen = torch.distributions.Exponential(torch.full((dim, 1), 200.0, dtype=torch.float64))
    seqs = gen.sample((4, T_))[..., 0].transpose(1, 2)  # (sequences, dim, T)
    A = -torch.full((dim, 2), 0.5, dtype=torch.float64)
    cal = calibrate_longmamba([seqs], [A], theta=1e-3)
    assert cal.global_mask(0).all()
    thr = cal.delta_threshold(S, 0).double()
    new = gen.sample((S,))[..., 0].T  # (dim, S)
    kept = torch.where(new > thr[:, None], new, 0.0).sum(1)
    ratio = kept / seqs.sum(2).mean(0)
    # about 4% spread per channel: each within 20%, their mean within 5%
    assert torch.all((ratio > 0.8) & (ratio < 1.2)) and abs(ratio.mean() - 1) < 0.05, ratio


def test_inputs_in_every_form_agree():
    deltas, As = calibration_data(layers=1)
    seqs = deltas[0]
    forms = [{"attn": seqs}, {"attn": list(seqs)}]
    cals = [calibrate_longmamba(f, {"attn": As[0]}, theta=0.5, min_length=T + 1)
            for f in forms]
    cals.append(calibrate_longmamba([seqs], [As[0]], theta=0.5, min_length=T + 1))
    single = calibrate_longmamba({"attn": seqs[0]}, {"attn": As[0]}, theta=0.5)
    thr = [c.delta_threshold(3 * T, c.layers[0]) for c in cals]
    assert torch.isfinite(thr[0]).any()
    assert all(torch.equal(thr[0], x) for x in thr[1:])
    assert single.training_length == T


def test_save_and_load(tmp_path):
    deltas, As = calibration_data()
    cal = calibrate_longmamba(deltas, As, theta=0.5, aggregate="mean", clamp_top=0.2,
                              min_length=3 * T)
    path = tmp_path / "longmamba.pt"
    cal.save(path)
    loaded = LongMambaCalibration.load(path)
    assert (loaded.training_length, loaded.theta, loaded.aggregate, loaded.clamp_top,
            loaded.min_length) == (T, 0.5, "mean", 0.2, 3 * T)
    for layer in cal.layers:
        assert torch.equal(loaded.global_mask(layer).cpu(), cal.global_mask(layer).cpu())
        for S in (3 * T - 1, 5 * T):
            assert torch.equal(loaded.delta_threshold(S, layer, DEVICE),
                               cal.delta_threshold(S, layer))
    # A file of the first format (no clamp, no minimum length) filters from T + 1, as it did.
    data = torch.load(path, weights_only=True)
    data.update(format="fusedscan.LongMambaCalibration/1")
    del data["clamp_top"], data["min_length"]
    torch.save(data, tmp_path / "v1.pt")
    old = LongMambaCalibration.load(tmp_path / "v1.pt")
    assert (old.clamp_top, old.min_length) == (None, T + 1)
    assert torch.isfinite(old.delta_threshold(T + 1, 0)).any()
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="LongMambaCalibration"):
        LongMambaCalibration.load(tmp_path / "other.pt")


@pytest.mark.parametrize("call,exc,words", [
    (dict(aggregate="median"), ValueError, ["aggregate"]),
    (dict(theta=1.5), ValueError, ["theta"]),
    (dict(theta=True), ValueError, ["theta"]),
    (dict(clamp_top=0), ValueError, ["clamp_top"]),
    (dict(clamp_top=1.5), ValueError, ["clamp_top"]),
    (dict(clamp_top=True), ValueError, ["clamp_top"]),
    (dict(min_length=0), ValueError, ["min_length"]),
    (dict(min_length=2.5), ValueError, ["min_length"]),
    (dict(A=[-torch.rand(DIM, N)]), ValueError, ["same", "layers"]),
    (dict(A=[-torch.rand(DIM + 1, N)] * 2), ValueError, ["dim"]),
    (dict(delta_hats=[torch.rand(DIM)] * 2), ValueError, ["delta_hats[0]"]),
    (dict(delta_hats=[[torch.rand(DIM, T), torch.rand(DIM, T + 1)]] * 2), ValueError,
     ["same shape"]),
    (dict(delta_hats=[torch.rand(DIM, T), torch.rand(DIM, T + 1)]), ValueError, ["same length"]),
    (dict(delta_hats="x"), TypeError, ["delta_hats"]),
])
def test_bad_input_is_named(call, exc, words):
    deltas, As = calibration_data()
    args = dict(delta_hats=[d.cpu() for d in deltas], A=[a.cpu() for a in As], theta=0.5)
    args.update(call)
    with pytest.raises(exc) as info:
        calibrate_longmamba(args.pop("delta_hats"), args.pop("A"), **args)
    for word in words:
        assert word in str(info.value)


def test_threshold_errors():
    deltas, As = calibration_data()
    cal = calibrate_longmamba(deltas, As, theta=0.5)
    with pytest.raises(ValueError, match="S"):
        cal.delta_threshold(0, 0)
    with pytest.raises(KeyError, match="layer 7"):
        cal.delta_threshold(100, 7)
