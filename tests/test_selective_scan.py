"""selective_scan_ext forward against the float64 reference.

Sizes are small on the CPU (Triton's interpreter) and real on CUDA; the checks are the same."""

import itertools

import pytest
import torch

from fusedscan import selective_scan_ext
from fusedscan.selective_scan.chunk import (
    CHUNK_SIZE, FORWARD_PLANS, FWD_DYNAMIC_ARGS, forward_plan, selective_scan_fwd,
)
from fusedscan.selective_scan.options import BCLayout
from reference import forward_tolerance
from tests.conftest import DEVICE, ON_GPU
from tests.helpers import (
    BC_KINDS, DTYPES, OPTIONS, combination_case, launcher_args, make_case, misaligned,
    nan_filled_outputs, option_ids, reference, rel_err, strided_case,
)

# (batch, dim, L, N): dim not a multiple of the channel block, L odd and over two chunks.
SHAPE = (2, 68, CHUNK_SIZE + 101, 16) if ON_GPU else (2, 6, 2 * CHUNK_SIZE + 13, 3)


def check(args, kwargs, dtype, return_last_state=True):
    with nan_filled_outputs():
        result = selective_scan_ext(*args, return_last_state, **kwargs)
    ref_out, ref_state = reference(args, kwargs)
    out = result[0] if return_last_state else result
    assert out.dtype == args[0].dtype
    assert out.shape == ref_out.shape
    errors = {"out": rel_err(out, ref_out)}
    if return_last_state:
        assert result[1].dtype == torch.float32
        errors["last_state"] = rel_err(result[1], ref_state)
    assert max(errors.values()) <= forward_tolerance(dtype), errors
    return errors


# The 2^10 combinations of the options over several chunks: tests/test_backward.py's
# test_every_combination_of_options checks the forward's outputs with its gradients.


# A sequence of one chunk or less (2048 positions on a GPU, 32 in the interpreter), which the
# launcher takes as one tile, with channels in several groups of B and C.
SHORT_SHAPE = (3, 68, 1999, 16) if ON_GPU else (2, 4, 29, 3)


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=len(OPTIONS))),
                         ids=option_ids)
def test_every_combination_of_options_on_a_short_sequence(flags):
    """All 2^10 combinations of the options where the launcher takes the sequence as one tile (on a
    GPU: one channel per program, its positions across the threads, the states in a loop)."""
    args, kwargs, dtype, return_last_state = combination_case(flags, SHORT_SHAPE)
    check(args, kwargs, dtype, return_last_state)


def test_short_sequences_take_one_pass():
    batch, dim, L, dstate = SHORT_SHAPE
    args, kwargs = make_case(batch, dim, L, dstate)
    u, delta, A, B, C, opts = launcher_args(args, kwargs)
    plan = forward_plan(u, delta, A, B, C, opts, BCLayout(), (None,) * 6)
    assert len(plan.launches) == 1 and plan.launches[0].grid[1] == 1
    launch = plan.launches[0]
    assert dict(zip(launch.names[FWD_DYNAMIC_ARGS:], launch.static))["ONE_TILE"]
    assert plan.scratch_size == 0
    if ON_GPU:
        assert launch.grid[0] == batch * dim  # one channel per program


@pytest.mark.parametrize("dstate", [1, 5, 17, 40] + ([64, 256] if ON_GPU else []))
@pytest.mark.parametrize("keep", [False, True])
def test_one_tile_state_sizes(dstate, keep):
    """The one-tile path's loop over the states: any N (no unrolled groups, no scratch), with
    initial state, per-state a_scale and kept positions."""
    batch, dim, L, _ = SHORT_SHAPE
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True, a_scale="dim_n",
                             keep=L // 3 if keep else None)
    check(args, kwargs, torch.float32)


@pytest.mark.parametrize("segments", [1, 2])
@pytest.mark.parametrize("dstate", [3, 20])
def test_one_channel_per_program(segments, dstate):
    """One channel per program over several tiles with the states unrolled (forced: the
    launcher takes one tile per channel up to one chunk and channel blocks beyond): one or two
    segments, N within one unrolled group of states and over it."""
    batch, dim, _, _ = SHORT_SHAPE
    L = 3 * 16 + 5 if not ON_GPU else 3 * 256 + 5
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True, delta_threshold=True)
    with nan_filled_outputs():
        out, last, _ = selective_scan_fwd(*launcher_args(args, kwargs), block_d=1,
                                          block_t=16 if not ON_GPU else 256, num_warps=1,
                                          num_segments=segments)
    ref_out, ref_state = reference(args, kwargs)
    assert rel_err(out, ref_out) <= 1e-5 and rel_err(last, ref_state) <= 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B_kind", BC_KINDS)
@pytest.mark.parametrize("C_kind", BC_KINDS)
def test_dtypes_and_bc_kinds(dtype, B_kind, C_kind):
    args, kwargs = make_case(*SHAPE, dtype=dtype, B_kind=B_kind, C_kind=C_kind,
                             initial_state=True, delta_threshold=True)
    check(args, kwargs, dtype)


@pytest.mark.parametrize("B_groups,C_groups", [(1, 4), (4, 2), (3, 6)])
def test_group_counts(B_groups, C_groups):
    """B and C with different group counts; 6 % 3 = 0 but 6 / 3 = 2 channels per group."""
    batch, _, L, dstate = SHAPE
    dim = 96 if ON_GPU else 12
    args, kwargs = make_case(batch, dim, L, dstate)
    args[3] = torch.randn(batch, B_groups, dstate, L, device=DEVICE)
    args[4] = torch.randn(batch, C_groups, dstate, L, device=DEVICE)
    check(args, kwargs, torch.float32)


@pytest.mark.parametrize("dstate", [1, 5, 16, 17, 40] + ([64, 256] if ON_GPU else []))
def test_state_sizes(dstate):
    """N not a power of two, N over one unrolled group of 16 (carried through the scratch)."""
    batch, dim, L, _ = SHAPE
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True, a_scale="dim_n")
    check(args, kwargs, torch.float32)


LENGTHS = [1, 2, 15, 16, 17, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 7]


@pytest.mark.parametrize("L", LENGTHS)
def test_lengths(L):
    batch, dim, _, dstate = SHAPE
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True)
    check(args, kwargs, torch.float32)


@pytest.mark.parametrize("K", [1, 2, CHUNK_SIZE + 3])
def test_keep_counts(K):
    batch, dim, _, dstate = SHAPE
    L = max(2 * K, 40)
    args, kwargs = make_case(batch, dim, L, dstate, keep=K, delta_threshold=True)
    check(args, kwargs, torch.float32)


def test_keep_all_positions_equals_plain_scan():
    batch, dim, L, dstate = SHAPE
    args, kwargs = make_case(batch, dim, L, dstate)
    plain = selective_scan_ext(*args, True, **kwargs)
    kept = selective_scan_ext(*args, True, **kwargs, keep_idx=torch.arange(
        L, device=DEVICE).expand(batch, L).contiguous())
    assert rel_err(kept[0], plain[0]) <= 1e-6 and rel_err(kept[1], plain[1]) <= 1e-6


@pytest.mark.parametrize("segments", [2, 3, 5])
@pytest.mark.parametrize("dstate", [3, 20])
def test_split_positions(segments, dstate):
    """Positions split into segments scanned in parallel, then folded (forced here; the
    launcher picks it by itself when batch · channel blocks cannot fill the GPU)."""
    batch, dim, _, _ = SHAPE
    L = 5 * CHUNK_SIZE - 3
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True, delta_threshold=True,
                             a_scale="dim")
    with nan_filled_outputs():
        out, last, chunk_states = selective_scan_fwd(*launcher_args(args, kwargs),
                                                     num_segments=segments)
    ref_out, ref_state = reference(args, kwargs)
    assert rel_err(out, ref_out) <= 1e-5 and rel_err(last, ref_state) <= 1e-5


@pytest.mark.parametrize("shape,segments", [(SHORT_SHAPE, None), (SHAPE, 1), (SHAPE, 2)],
                         ids=["one-tile", "one-segment", "two-segments"])
def test_without_last_state_the_same_out(shape, segments):
    """last_state=False: no last state (the kernel is told by a flag not to write it), and the
    same out and chunk_states bit for bit, on each of the kernel's paths."""
    batch, dim, L, dstate = shape
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True)
    results = {}
    for last_state in (True, False):
        with nan_filled_outputs():
            results[last_state] = selective_scan_fwd(*launcher_args(args, kwargs),
                                                     last_state=last_state,
                                                     num_segments=segments)
    assert results[False][1] is None and results[True][1] is not None
    for i in (0, 2):
        assert torch.equal(results[False][i], results[True][i]), i


def test_chunk_states_are_the_states_entering_each_chunk():
    batch, dim, _, dstate = SHAPE
    L = 3 * CHUNK_SIZE + 5
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True)
    with nan_filled_outputs():
        _, _, chunk_states = selective_scan_fwd(*launcher_args(args, kwargs))
    assert chunk_states.shape == (batch, dim, 4, dstate)
    for c in range(4):
        prefix = [a[..., :c * CHUNK_SIZE] if torch.is_tensor(a) and a.dim() == 3 else a
                  for a in args]
        if c == 0:
            expected = kwargs["initial_state"].double()
        else:
            _, expected = reference(prefix, kwargs)
        assert rel_err(chunk_states[:, :, c], expected) <= 1e-5, c


def test_non_contiguous_inputs():
    """Transposed activations; strided D, delta_bias, scales, threshold and initial state."""
    args, kwargs = strided_case(*SHAPE)
    check(args, kwargs, torch.float32)


def test_launch_plans_follow_the_signature():
    """The launch configuration is kept per signature of the inputs: fresh values of the same
    signature reuse it (on a GPU through the compiled kernel directly), while other strides or
    a pointer off 16-byte alignment get plans of their own; every result is right."""
    FORWARD_PLANS.clear()
    args, kwargs = make_case(*SHAPE, dtype=torch.bfloat16)
    check(args, kwargs, torch.bfloat16)
    assert len(FORWARD_PLANS) == 1
    args, kwargs = make_case(*SHAPE, dtype=torch.bfloat16)
    check(args, kwargs, torch.bfloat16)
    assert len(FORWARD_PLANS) == 1
    transposed = lambda x: x.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731
    for i, variant in enumerate((misaligned, transposed)):
        changed = list(args)
        changed[0] = variant(args[0])
        check(changed, kwargs, torch.bfloat16)
        assert len(FORWARD_PLANS) == 2 + i
    check(args, kwargs, torch.bfloat16)
    assert len(FORWARD_PLANS) == 3


def test_mamba_ssm_positional_order_without_keywords():
    """With no keyword argument the call is mamba-ssm's selective_scan_fn(u, delta, A, B, C, D,
    z, delta_bias, delta_softplus, return_last_state)."""
    args, _ = make_case(*SHAPE)
    out = selective_scan_ext(*args)
    out2, last = selective_scan_ext(*args, True)
    ref_out, ref_state = reference(args, {})
    assert torch.equal(out, out2)
    assert rel_err(out, ref_out) <= 1e-5 and rel_err(last, ref_state) <= 1e-5


def test_threshold_filtered_tokens_leave_the_state_unchanged():
    """A channel whose threshold is above every Δ̂ never updates its state, but still outputs
    D·u (gated by z)."""
    batch, dim, L, dstate = SHAPE
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True, z=False)
    kwargs["delta_threshold"] = torch.full((dim,), 1e30, device=DEVICE)
    out, last = selective_scan_ext(*args, True, **kwargs)
    h0, u, C, D = kwargs["initial_state"], args[0], args[4], args[5]
    assert torch.equal(last, h0)
    expected = torch.einsum("bdn,bnl->bdl", h0, C) + D[None, :, None] * u
    assert rel_err(out, expected) <= 1e-5


@pytest.mark.skipif(not ON_GPU, reason="real size: CUDA only")
def test_long_sequence_over_int32_offsets():
    """batch·dim·L > 2^31 and L > 100k: int64 offsets. The reference runs on a few channels,
    including the last ones, whose elements lie past 2^31."""
    batch, dim, L, dstate = 1, 16400, 131101, 16
    assert batch * dim * L > 2**31
    args, kwargs = make_case(batch, dim, L, dstate, dtype=torch.bfloat16, B_kind="variable",
                             C_kind="variable", initial_state=True)
    out, last = selective_scan_ext(*args, True, **kwargs)
    channels = torch.tensor([0, 1, dim - 2, dim - 1], device=DEVICE)

    def pick(x, name):
        if not torch.is_tensor(x):
            return x
        if name in ("u", "delta", "z", "initial_state"):
            return x[:, channels]
        if name in ("A", "D", "delta_bias"):
            return x[channels]
        return x

    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "softplus"]
    sub_args = [pick(a, n) for a, n in zip(args, names)]
    sub_kwargs = {k: pick(v, k) for k, v in kwargs.items()}
    ref_out, ref_state = reference(sub_args, sub_kwargs)
    assert rel_err(out[:, channels], ref_out) <= 1e-2
    assert rel_err(last[:, channels], ref_state) <= 1e-2
