"""Bad input raises TypeError / ValueError / NotImplementedError naming the argument, before any
kernel runs."""

import math

import pytest
import torch

from fusedscan import selective_scan_ext, selective_state_update_ext
import fusedscan.utils.device
from fusedscan.selective_scan.validate import check_inputs
from tests.conftest import DEVICE
from tests.helpers import make_case

BATCH, DIM, L, N = 2, 8, 20, 4


def base(**over):
    args, kwargs = make_case(BATCH, DIM, L, N, initial_state=True, delta_scale="tensor",
                             a_scale="dim", delta_threshold=True, keep=5)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus"]
    call = dict(zip(names, args), **kwargs)
    call.update(over)
    return call


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


CASES = [
    # (override, exception, words the message must contain)
    (dict(u=[1.0]), TypeError, ["u", "torch.Tensor"]),
    # A float64 u decides the other inputs' dtype: the error names both.
    (dict(u=t(BATCH, DIM, L).double()), TypeError,
     ["delta must have dtype float64 like u", "got float32"]),
    (dict(u=t(BATCH, DIM, L).int()), TypeError, ["u", "dtype"]),
    (dict(u=t(DIM, L)), ValueError, ["u", "3-D"]),
    (dict(delta=t(BATCH, DIM, L + 1)), ValueError, ["delta", "shape"]),
    (dict(delta=t(BATCH, DIM, L).double()), TypeError,
     ["delta must have dtype", "float64 only with a float64 u", "got float64"]),
    (dict(A=t(DIM, N) * (1 + 1j)), NotImplementedError, ["A", "complex"]),
    (dict(A=t(DIM + 1, N)), ValueError, ["A", "(dim, N)"]),
    (dict(A=t(DIM, N, dtype=torch.bfloat16)), TypeError, ["A", "float32", "unless u is float64"]),
    (dict(A=t(DIM, 257)), ValueError, ["A", "256"]),
    (dict(B=t(BATCH, N + 1, L)), ValueError, ["B", "(batch, N, L)", f"N = {N} is A's dim 1"]),
    # N comes from A: an A with one column too many is named beside the B it disagrees with.
    (dict(A=-t(DIM, N + 1).abs()), ValueError,
     ["B must have shape (batch, N, L)", f"N = {N + 1} is A's dim 1"]),
    (dict(B=t(BATCH, 3, N, L)), ValueError, ["B", "groups", "divide"]),
    (dict(B=t(BATCH, 2, N, L + 1)), ValueError, ["B", "(batch, G, N, L)"]),
    (dict(B=t(DIM, N, dtype=torch.bfloat16)), TypeError, ["B", "float32"]),
    (dict(B=t(BATCH, N)), ValueError, ["B", "(dim, N)"]),
    (dict(B=t(1, BATCH, 1, N, L)), ValueError, ["B", "5-D"]),
    (dict(C=t(BATCH, N, L).double()), TypeError, ["C", "dtype"]),
    (dict(C=t(DIM, N) * (1 + 1j)), NotImplementedError, ["C", "complex"]),
    (dict(D=t(DIM + 1)), ValueError, ["D", "(dim,)"]),
    (dict(D=t(DIM).double()), TypeError, ["D", "float32"]),
    (dict(z=t(BATCH, DIM, L - 1)), ValueError, ["z", "shape"]),
    (dict(z=t(BATCH, DIM, L).double()), TypeError, ["z"]),
    (dict(delta_bias=t(1, DIM)), ValueError, ["delta_bias", "(dim,)"]),
    (dict(delta_softplus=1), TypeError, ["delta_softplus", "bool"]),
    (dict(return_last_state="yes"), TypeError, ["return_last_state", "bool"]),
    (dict(initial_state=t(BATCH, DIM, N + 1)), ValueError,
     ["initial_state", "(batch, dim, N)", "A's dim 1"]),
    (dict(initial_state=t(BATCH, DIM, N, dtype=torch.bfloat16)), TypeError, ["initial_state"]),
    (dict(delta_scale="2"), TypeError, ["delta_scale", "float"]),
    (dict(delta_scale=True), TypeError, ["delta_scale"]),
    (dict(delta_scale=t(DIM, 1)), ValueError, ["delta_scale", "(dim,)"]),
    (dict(delta_scale=t(DIM).half()), TypeError, ["delta_scale", "float32"]),
    (dict(a_scale=t(N)), ValueError, ["a_scale", "(dim, N)"]),
    (dict(a_scale=[1.0]), TypeError, ["a_scale"]),
    (dict(delta_scale=-0.5), ValueError, ["delta_scale", ">= 0", "grow"]),
    (dict(a_scale=-2), ValueError, ["a_scale", ">= 0"]),
    (dict(a_scale=math.nan), ValueError, ["a_scale", "finite"]),
    (dict(delta_scale=math.inf), ValueError, ["delta_scale", "finite"]),
    (dict(delta_threshold=t(DIM + 1)), ValueError, ["delta_threshold", "(dim,)"]),
    (dict(keep_idx=torch.arange(5, device=DEVICE).repeat(BATCH, 1).int()), TypeError,
     ["keep_idx", "int64"]),
    (dict(keep_idx=torch.arange(5, device=DEVICE)), ValueError, ["keep_idx", "(batch, K)"]),
    (dict(keep_idx=torch.arange(5, device=DEVICE).repeat(BATCH + 1, 1)), ValueError,
     ["keep_idx", "batch"]),
    (dict(keep_idx=torch.zeros(BATCH, 0, dtype=torch.int64, device=DEVICE)), ValueError,
     ["keep_idx", "K >= 1"]),
    (dict(keep_idx=torch.tensor([[0, 2, 2], [1, 2, 3]], device=DEVICE), check_values=True),
     ValueError, ["keep_idx", "strictly increasing"]),
    (dict(keep_idx=torch.tensor([[0, 2, 1], [1, 2, 3]], device=DEVICE), check_values=True),
     ValueError, ["keep_idx", "strictly increasing"]),
    (dict(keep_idx=torch.tensor([[0, 2, L], [1, 2, 3]], device=DEVICE), check_values=True),
     ValueError, ["keep_idx", "[0, L)"]),
    (dict(keep_idx=torch.tensor([[-1, 2, 3], [1, 2, 3]], device=DEVICE), check_values=True),
     ValueError, ["keep_idx", "[0, L)"]),
    (dict(check_values=1), TypeError, ["check_values", "bool"]),
    (dict(A=(-t(DIM, N).abs()).index_put_((torch.tensor(3), torch.tensor(1)), torch.tensor(0.5)),
          check_values=True), ValueError, ["A must be <= 0", "A[3, 1] = 0.5"]),
    (dict(delta_scale=t(DIM).abs().index_fill_(0, torch.tensor(2), -1.0), check_values=True),
     ValueError, ["delta_scale must be >= 0", "delta_scale[2] = -1"]),
    (dict(a_scale=t(DIM).abs().index_fill_(0, torch.tensor(6), -2.0), check_values=True),
     ValueError, ["a_scale must be >= 0", "a_scale[6] = -2"]),
    (dict(u=t(BATCH, DIM, 0), delta=t(BATCH, DIM, 0)), ValueError, ["u", ">= 1"]),
    (dict(D=torch.randn(DIM, device="meta")), ValueError, ["D", "device"]),
]


@pytest.mark.parametrize("over,exc,words", CASES, ids=[f"{sorted(c[0])}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_named(over, exc, words):
    call = base(**over)
    u, delta, A, B, C = (call.pop(k) for k in ("u", "delta", "A", "B", "C"))
    with pytest.raises(exc) as info:
        selective_scan_ext(u, delta, A, B, C, **call)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_valid_base_case_runs():
    call = base()
    u, delta, A, B, C = (call.pop(k) for k in ("u", "delta", "A", "B", "C"))
    out = selective_scan_ext(u, delta, A, B, C, **call)
    assert out.shape == (BATCH, DIM, 5) and torch.isfinite(out).all()


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    monkeypatch.setattr(fusedscan.utils.device, "INTERPRETED", False)
    u = torch.randn(1, 2, 3)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        check_inputs(u, u, torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4), None, None,
                     None, False, False, None, None, None, None, None)


BAD_KEEP = {
    # row 0 breaks the rules from column `first_bad` on (row 1 is valid)
    "repeated": ([[0, 2, 2, 5], [1, 2, 3, 4]], 2),
    "decreasing": ([[0, 3, 1, 5], [1, 2, 3, 4]], 2),
    "too-large": ([[0, 2, 5, L], [1, 2, 3, 4]], 3),
    "negative": ([[-1, 2, 3, 5], [1, 2, 3, 4]], 0),
}


@pytest.mark.parametrize("case", BAD_KEEP)
def test_bad_keep_idx_values_give_nan_without_waiting(case):
    """By default keep_idx's values are checked on the device: the row's outputs are NaN from
    the first entry that breaks the rules (and its last state), the other row is untouched."""
    values, first_bad = BAD_KEEP[case]
    call = base(keep_idx=torch.tensor(values, device=DEVICE), return_last_state=True)
    u, delta, A, B, C = (call.pop(k) for k in ("u", "delta", "A", "B", "C"))
    out, last = selective_scan_ext(u, delta, A, B, C, **call)
    good = dict(call, keep_idx=torch.tensor([values[1], values[1]], device=DEVICE))
    ref_out, ref_last = selective_scan_ext(u, delta, A, B, C, **good)
    assert torch.isfinite(out[0, :, :first_bad]).all()
    assert torch.isnan(out[0, :, first_bad:]).all() and torch.isnan(last[0]).all()
    assert torch.equal(out[1], ref_out[1]) and torch.equal(last[1], ref_last[1])


GROWING = {
    # (override of the valid inputs, channel d and states whose state grows without bound)
    "A": (lambda c: dict(A=c["A"].index_put((torch.tensor(3), torch.tensor(1)),
                                              torch.tensor(0.25, device=DEVICE))), 3, [1]),
    "a_scale": (lambda c: dict(a_scale=c["a_scale"].index_fill(0, torch.tensor(6, device=DEVICE),
                                                                -0.5)), 6, slice(None)),
    "delta_scale": (lambda c: dict(delta_scale=c["delta_scale"].index_fill(
        0, torch.tensor(2, device=DEVICE), -1.0)), 2, slice(None)),
}


@pytest.mark.parametrize("case", GROWING)
def test_growing_states_give_nan_without_waiting(case):
    """A_eff > 0 or delta_scale < 0 (values the host does not read) make the channel's out, the
    growing states and the gradients NaN; the other channels are untouched."""
    over, d, states = GROWING[case]
    call = base(return_last_state=True, keep_idx=None)
    u, delta, A, B, C = (call.pop(k) for k in ("u", "delta", "A", "B", "C"))
    ref_out, ref_last = selective_scan_ext(u, delta, A, B, C, **call)
    bad = over(dict(call, A=A))
    A = bad.pop("A", A)
    call.update(bad)
    u = u.detach().requires_grad_()
    out, last = selective_scan_ext(u, delta, A, B, C, **call)
    others = [c for c in range(DIM) if c != d]
    assert torch.isnan(out[:, d]).all() and torch.isnan(last[:, d, states]).all()
    assert torch.equal(out[:, others], ref_out[:, others])
    assert torch.equal(last[:, others], ref_last[:, others])
    out.float().sum().backward()
    assert torch.isnan(u.grad[:, d]).all()
    step = step_base(**{k: v for k, v in call.items() if k in ("a_scale", "delta_scale")},
                     A=A, delta_threshold=None)
    state = step["state"]
    step_out = selective_state_update_ext(**step)
    assert torch.isnan(step_out[:, d]).all() and torch.isnan(state[:, d, states]).all()
    assert torch.isfinite(step_out[:, others]).all() and torch.isfinite(state[:, others]).all()


def test_float_scales_are_accepted_as_numbers():
    call = base(delta_scale=2, a_scale=math.pi)
    u, delta, A, B, C = (call.pop(k) for k in ("u", "delta", "A", "B", "C"))
    assert torch.isfinite(selective_scan_ext(u, delta, A, B, C, **call)).all()


def test_number_scales_are_checked_on_every_call():
    """A signature that passed once is not checked again, but a number's value is not part of
    it: a negative scale after a valid one of the same type still raises."""
    call = base(delta_scale=0.5, a_scale=0.0)
    u, delta, A, B, C = (call.pop(k) for k in ("u", "delta", "A", "B", "C"))
    selective_scan_ext(u, delta, A, B, C, **call)
    for name in ("delta_scale", "a_scale"):
        with pytest.raises(ValueError, match=f"{name} must be finite and >= 0"):
            selective_scan_ext(u, delta, A, B, C, **dict(call, **{name: -0.5}))


def step_base(**over):
    """Valid arguments of selective_state_update_ext with every option, then `over`."""
    call = dict(state=t(BATCH, DIM, N), x=t(BATCH, DIM), dt=t(BATCH, DIM), A=-t(DIM, N).abs(),
                B=t(BATCH, 2, N), C=t(BATCH, N), D=t(DIM), z=t(BATCH, DIM), dt_bias=t(DIM),
                dt_softplus=True, delta_scale=t(DIM).abs(), a_scale=t(DIM, N).abs(),
                delta_threshold=t(DIM))
    call.update(over)
    return call


STEP_CASES = [
    (dict(x=t(BATCH, DIM, 1)), ValueError, ["x", "(batch, dim)"]),
    (dict(x=t(BATCH, DIM).int()), TypeError, ["x", "dtype"]),
    (dict(state=t(BATCH, DIM, N, dtype=torch.bfloat16)), TypeError, ["state", "float32"]),
    (dict(state=t(BATCH, DIM, N + 1)), ValueError, ["state", "(batch, dim, N)"]),
    (dict(state=t(1, DIM, N).expand(BATCH, DIM, N)), ValueError, ["state", "in place"]),
    (dict(state=[0.0]), TypeError, ["state", "torch.Tensor"]),
    (dict(dt=None), TypeError, ["dt", "torch.Tensor"]),
    (dict(dt=t(BATCH, DIM + 1)), ValueError, ["dt", "(batch, dim)"]),
    (dict(z=t(BATCH, DIM).double()), TypeError, ["z", "dtype"]),
    (dict(A=t(DIM + 1, N)), ValueError, ["A", "(dim, N)"]),
    (dict(A=t(DIM, N).half()), TypeError, ["A", "float32"]),
    (dict(B=t(BATCH, N, 1)), ValueError, ["B", "(batch, G, N)"]),
    (dict(B=t(BATCH, 3, N)), ValueError, ["B", "groups", "divide"]),
    (dict(C=t(BATCH, N + 1)), ValueError, ["C", "(batch, N)", f"N = {N} is A's dim 1"]),
    (dict(A=-t(DIM, N + 1).abs()), ValueError, ["state", f"N = {N + 1} is A's dim 1"]),
    (dict(x=t(BATCH, DIM).double()), TypeError, ["A must have dtype float64 like x"]),
    (dict(C=t(BATCH, 1, 1, N)), ValueError, ["C", "4-D"]),
    (dict(D=t(DIM + 1)), ValueError, ["D", "(dim,)"]),
    (dict(dt_bias=t(DIM).double()), TypeError, ["dt_bias", "float32"]),
    (dict(dt_softplus=1), TypeError, ["dt_softplus", "bool"]),
    (dict(delta_scale="1"), TypeError, ["delta_scale", "float"]),
    (dict(delta_scale=-1.0), ValueError, ["delta_scale", ">= 0"]),
    (dict(a_scale=math.nan), ValueError, ["a_scale", "finite"]),
    (dict(a_scale=t(N)), ValueError, ["a_scale", "(dim, N)"]),
    (dict(delta_threshold=t(DIM, 1)), ValueError, ["delta_threshold", "(dim,)"]),
    (dict(D=torch.randn(DIM, device="meta")), ValueError, ["D", "device"]),
    (dict(dt_bias=t(DIM).requires_grad_()), ValueError, ["dt_bias", "no_grad"]),
    (dict(check_values="yes"), TypeError, ["check_values", "bool"]),
    (dict(A=t(DIM, N).abs(), check_values=True), ValueError, ["A must be <= 0", "A[0, 0]"]),
    (dict(a_scale=-t(DIM, N).abs(), check_values=True), ValueError,
     ["a_scale must be >= 0", "a_scale[0, 0]"]),
    (dict(delta_scale=-t(DIM).abs(), check_values=True), ValueError,
     ["delta_scale must be >= 0", "delta_scale[0]"]),
]


@pytest.mark.parametrize("over,exc,words", STEP_CASES,
                         ids=[f"{sorted(c[0])}-{i}" for i, c in enumerate(STEP_CASES)])
def test_step_bad_input_is_named(over, exc, words):
    call = step_base(**over)
    state = call["state"].clone() if torch.is_tensor(call["state"]) else None
    with pytest.raises(exc) as info:
        selective_state_update_ext(**call)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    if state is not None:
        assert torch.equal(call["state"], state)  # nothing ran


def test_step_valid_base_case_runs():
    out = selective_state_update_ext(**step_base())
    assert out.shape == (BATCH, DIM) and torch.isfinite(out).all()
    with torch.no_grad():
        selective_state_update_ext(**step_base(dt_bias=t(DIM).requires_grad_()))
