"""DeciMamba: decimation_scores, decimate and DecimationSchedule against reference/."""

import pytest
import torch

from fusedscan import DecimationSchedule, decimate, decimation_scores
from reference import decimate_from_scores_ref, decimation_scores_ref, schedule_num_kept_ref
from tests.conftest import DEVICE, ON_GPU
from tests.helpers import DTYPES, nan_filled_outputs, rel_err

# (batch, dim, L): dim not a multiple of the channel block, L not of the position block.
SHAPE = (3, 200, 5003) if ON_GPU else (2, 6, 37)


def make_delta(batch, dim, L, dtype, bias, separated=False):
    """Random delta and delta_bias. separated: delta[b, d, t] = g[b, t]·w[d] with w > 0 and g a
    permutation of evenly spaced values, so that Δ̂ and its norm grow with g and the scores of
    different positions are far apart."""
    if separated:
        g = torch.stack([torch.linspace(-2, 2, L, device=DEVICE)[torch.randperm(L, device=DEVICE)]
                         for _ in range(batch)])
        delta = g[:, None, :] * (0.5 + torch.rand(dim, device=DEVICE))[None, :, None]
    else:
        delta = torch.randn(batch, dim, L, device=DEVICE)
    delta_bias = 0.3 * torch.randn(dim, device=DEVICE) if bias else None
    return delta.to(dtype), delta_bias


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_scores(dtype, bias, softplus):
    delta, delta_bias = make_delta(*SHAPE, dtype, bias)
    if dtype == torch.float64 and delta_bias is not None:
        delta_bias = delta_bias.double()
    with nan_filled_outputs():
        scores = decimation_scores(delta, delta_bias, softplus)
    assert scores.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert scores.shape == SHAPE[::2]
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_err(scores, decimation_scores_ref(delta, delta_bias, softplus)) <= tol


def test_scores_of_a_strided_delta():
    batch, dim, L = SHAPE
    delta = torch.randn(batch, L, dim, device=DEVICE).transpose(1, 2)
    bias = 0.3 * torch.randn(2 * dim, device=DEVICE)[::2]
    assert rel_err(decimation_scores(delta, bias), decimation_scores_ref(delta, bias)) <= 1e-5


@pytest.mark.parametrize("keep_last", [0, 1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decimate_selects_the_reference_positions(dtype, keep_last):
    """Scores far apart: exactly the reference's positions, every row on its own."""
    batch, dim, L = SHAPE
    delta, delta_bias = make_delta(batch, dim, L, dtype, True, separated=True)
    k = L // 4
    keep = decimate(delta, delta_bias, k, keep_last)
    expected = decimate_from_scores_ref(decimation_scores_ref(delta, delta_bias), k, keep_last)
    assert keep.dtype == torch.int64 and keep.shape == (batch, k + keep_last)
    assert torch.equal(keep.cpu(), expected)


@pytest.mark.parametrize("keep_last", [0, 1, 2])
def test_decimate_random_scores(keep_last):
    """Random inputs (near ties possible): the kept positions are increasing, end with the last
    keep_last, and no dropped position scores above a kept one (up to float32 rounding)."""
    batch, dim, L = SHAPE
    delta, delta_bias = make_delta(batch, dim, L, torch.float32, True)
    k = L // 3
    keep = decimate(delta, delta_bias, k, keep_last).cpu()
    ref = decimation_scores_ref(delta, delta_bias).cpu()
    head = L - keep_last
    assert torch.all(keep[:, 1:] > keep[:, :-1])
    assert torch.equal(keep[:, k:], torch.arange(head, L).expand(batch, keep_last))
    for b in range(batch):
        kept = torch.zeros(head, dtype=torch.bool)
        kept[keep[b, :k]] = True
        assert ref[b, :head][kept].min() >= ref[b, :head][~kept].max() * (1 - 1e-5)


@pytest.mark.parametrize("k,keep_last", [(36, 1), (37, 0), (100, 1), (0, 37), (36, 0)])
def test_decimate_keeps_everything_when_k_covers_the_head(k, keep_last):
    delta, delta_bias = make_delta(2, 4, 37, torch.float32, True)
    keep = decimate(delta, delta_bias, k, keep_last)
    if 37 - keep_last <= k:
        assert torch.equal(keep.cpu(), torch.arange(37).expand(2, 37))
    else:
        assert keep.shape == (2, k + keep_last)


@pytest.mark.parametrize("over,exc,words", [
    (dict(k=-1), ValueError, ["k", ">= 0"]),
    (dict(k=2.0), TypeError, ["k", "int"]),
    (dict(keep_last=-1), ValueError, ["keep_last"]),
    (dict(keep_last=50), ValueError, ["keep_last", "<= L"]),
    (dict(k=0, keep_last=0), ValueError, ["at least one"]),
    (dict(delta=torch.randn(4, 37)), ValueError, ["delta", "3-D"]),
    (dict(delta=torch.randn(1, 4, 37).int()), TypeError, ["delta", "dtype"]),
    (dict(delta_bias=torch.randn(5)), ValueError, ["delta_bias", "(dim,)"]),
    (dict(delta_softplus=1), TypeError, ["delta_softplus", "bool"]),
])
def test_decimate_bad_input_is_named(over, exc, words):
    call = dict(delta=torch.randn(1, 4, 37), delta_bias=torch.randn(4), k=5, keep_last=1,
                delta_softplus=True)
    call.update(over)
    call = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in call.items()}
    with pytest.raises(exc) as info:
        decimate(**call)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("L", [1, 20, 21, 300, 2001, 16000, 100000])
def test_schedule_num_kept(L):
    sched = DecimationSchedule(layers=[12, 14, 16, 18, 20, 22, 24, 26], L_base=2000, beta=0.5,
                               min_seq_len=20, keep_last=1)
    for s, layer in enumerate(sched.layers):
        assert sched.num_kept(layer, L) == schedule_num_kept_ref(s, L, 2000, 0.5, 20, 1)
    assert sched.num_kept(13, L) is None


def test_schedule_defaults_and_select():
    sched = DecimationSchedule()
    assert (sched.layers, sched.L_base, sched.beta, sched.min_seq_len) == ((12,), 2000, 0.5, 20)
    delta, delta_bias = make_delta(2, 4, 37, torch.float32, True)
    assert sched.select(11, delta, delta_bias) is None
    small = DecimationSchedule(layers=(3,), L_base=10, beta=0.5, min_seq_len=2, keep_last=2)
    assert torch.equal(small.select(3, delta, delta_bias), decimate(delta, delta_bias, 10, 2))


@pytest.mark.parametrize("fields,exc", [
    (dict(layers=(1, 1)), ValueError), (dict(layers=(-1,)), TypeError),
    (dict(beta=0), ValueError), (dict(beta=1.5), ValueError), (dict(L_base=0), ValueError),
    (dict(min_seq_len=0), ValueError), (dict(keep_last=-1), ValueError),
])
def test_schedule_bad_fields(fields, exc):
    with pytest.raises(exc):
        DecimationSchedule(**fields)
