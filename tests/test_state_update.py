"""selective_state_update_ext: one step against the float64 reference, and prefill + steps
against one scan over the whole sequence."""

import itertools

import pytest
import torch

from fusedscan import selective_scan_ext, selective_state_update_ext
from reference import forward_tolerance
from reference.state_update import selective_state_update_ref
from tests.conftest import DEVICE, ON_GPU
from tests.helpers import DTYPES, make_case, nan_filled_outputs, rel_err, strided, to_double

# (batch, dim, N): dim not a multiple of the channel block, N not a power of two.
SHAPE = (3, 200, 16) if ON_GPU else (2, 6, 5)
STEP_OPTIONS = ["D", "z", "delta_bias", "delta_softplus", "delta_scale", "a_scale",
                "delta_threshold"]
SCALE_KWARGS = ("delta_scale", "a_scale", "delta_threshold")


def step_inputs(args, kwargs, t, state):
    """The arguments of selective_state_update_ext for token t of a make_case scan case."""
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = args
    step_args = [state, u[:, :, t], delta[:, :, t], A, B[..., t], C[..., t], D,
                 None if z is None else z[:, :, t], delta_bias, delta_softplus]
    return step_args, {k: v for k, v in kwargs.items() if k in SCALE_KWARGS}


def check_step(args, kwargs, dtype, state):
    """One step from `state` (a float32 (batch, dim, N) tensor, possibly strided) against the
    reference on the same rounded inputs, in float64."""
    step_args, step_kwargs = step_inputs(args, kwargs, 0, state)
    ref_out, ref_state = selective_state_update_ref(
        *[to_double(a) for a in step_args], **{k: to_double(v) for k, v in step_kwargs.items()})
    with nan_filled_outputs():
        out = selective_state_update_ext(*step_args, **step_kwargs)
    assert out.dtype == step_args[1].dtype and out.shape == ref_out.shape
    errors = {"out": rel_err(out, ref_out), "state": rel_err(state, ref_state)}
    assert max(errors.values()) <= forward_tolerance(dtype), errors


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=len(STEP_OPTIONS))),
                         ids=lambda f: "-".join(o for o, on in zip(STEP_OPTIONS, f) if on) or "none")
def test_every_combination_of_options(flags):
    on = dict(zip(STEP_OPTIONS, flags))
    index = sum(bit << i for i, bit in enumerate(flags))
    dtype = DTYPES[index % 3]
    batch, dim, dstate = SHAPE
    args, kwargs = make_case(
        batch, dim, 1, dstate, dtype=dtype, B_kind=("variable", "grouped")[index % 2],
        C_kind=("variable", "grouped")[(index // 2) % 2], D=on["D"], z=on["z"],
        delta_bias=on["delta_bias"], delta_softplus=on["delta_softplus"], initial_state=True,
        delta_scale=("float", "tensor")[index % 2] if on["delta_scale"] else None,
        a_scale=("float", "dim", "dim_n")[index % 3] if on["a_scale"] else None,
        delta_threshold=on["delta_threshold"])
    check_step(args, kwargs, dtype, kwargs.pop("initial_state"))


@pytest.mark.parametrize("dstate", [1, 3, 16, 17, 64] + ([256] if ON_GPU else []))
def test_state_sizes(dstate):
    batch, dim, _ = SHAPE
    args, kwargs = make_case(batch, dim, 1, dstate, initial_state=True, a_scale="dim_n",
                             delta_threshold=True)
    check_step(args, kwargs, torch.float32, kwargs.pop("initial_state"))


def test_strided_inputs_and_state_updated_in_place():
    """A strided state is updated in place (same storage); strided x, B and parameters."""
    batch, dim, dstate = SHAPE
    args, kwargs = make_case(batch, dim, 2, dstate, B_kind="grouped", initial_state=True,
                             delta_scale="tensor", a_scale="dim", delta_threshold=True)
    state = strided(kwargs.pop("initial_state"))
    args[5], args[7] = strided(args[5]), strided(args[7])
    kwargs = {k: strided(v) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    ptr = state.data_ptr()
    check_step(args, kwargs, torch.float32, state)  # args[0][:, :, 0] etc. are strided too
    assert state.data_ptr() == ptr and not state.is_contiguous()


def test_float64():
    batch, dim, dstate = SHAPE
    args, kwargs = make_case(batch, dim, 1, dstate, initial_state=True, delta_scale="tensor",
                             a_scale="dim_n", delta_threshold=True)
    args = [to_double(a) for a in args]
    kwargs = {k: to_double(v) for k, v in kwargs.items()}
    state = kwargs["initial_state"].clone()
    step_args, step_kwargs = step_inputs(args, kwargs, 0, state)
    ref_out, ref_state = selective_state_update_ref(kwargs["initial_state"], *step_args[1:],
                                                    **step_kwargs)
    out = selective_state_update_ext(*step_args, **step_kwargs)
    assert out.dtype == torch.float64
    # Triton passes the scalar multipliers (log2 e, float scales) as float32: about 1e-9 on the GPU.
    assert rel_err(out, ref_out) <= 1e-8 and rel_err(state, ref_state) <= 1e-8


PREFILL_CASES = {
    "plain": dict(),
    "all-options": dict(initial_state=True, delta_scale="tensor", a_scale="dim_n",
                        delta_threshold=True),
    "float-scales-grouped": dict(B_kind="grouped", C_kind="grouped", delta_scale="float",
                                 a_scale="float", delta_softplus=False),
    "keep_idx": dict(a_scale="dim", delta_threshold=True, keep=True),
    "no-D-no-z": dict(D=False, z=False, delta_bias=False),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PREFILL_CASES)
def test_prefill_then_steps_equals_one_scan(case, dtype):
    """Prefill of L tokens with return_last_state, then T steps from its last state: the same
    outputs and final state as one selective_scan_ext over all L + T tokens (with keep_idx:
    the prefill keeps some of its tokens, the long scan those and the T new ones)."""
    batch, dim, dstate = SHAPE
    L, T = (1000, 12) if ON_GPU else (21, 4)
    options = dict(PREFILL_CASES[case])
    keep = options.pop("keep", False)
    args, kwargs = make_case(batch, dim, L + T, dstate, dtype=dtype, **options)
    prefix = [a[..., :L] if torch.is_tensor(a) and a.dim() >= 3 else a for a in args]
    prefill_kwargs, full_kwargs = dict(kwargs), dict(kwargs)
    if keep:
        kept = torch.stack([torch.randperm(L, device=DEVICE)[:L // 3].sort().values
                            for _ in range(batch)])
        prefill_kwargs["keep_idx"] = kept
        full_kwargs["keep_idx"] = torch.cat(
            [kept, torch.arange(L, L + T, device=DEVICE).expand(batch, T)], 1)
    out_prefill, state = selective_scan_ext(*prefix, True, **prefill_kwargs)
    steps = []
    for t in range(L, L + T):
        step_args, step_kwargs = step_inputs(args, kwargs, t, state)
        steps.append(selective_state_update_ext(*step_args, **step_kwargs))
    out_full, state_full = selective_scan_ext(*args, True, **full_kwargs)
    out = torch.cat([out_prefill, torch.stack(steps, -1)], -1)
    tol = forward_tolerance(dtype)
    assert rel_err(out[..., -T:], out_full[..., -T:]) <= tol
    assert rel_err(out, out_full) <= tol
    assert rel_err(state, state_full) <= tol
