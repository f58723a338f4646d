"""selective_scan_ext backward against autograd through the float64 reference.

Every floating input gets a gradient through both outputs (out and last_state), compared by
relative error with the reference's gradient on the same rounded inputs and the same output
gradients. Sizes are small on the CPU (Triton's interpreter) and real on CUDA."""

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fusedscan import selective_scan_ext
from fusedscan.selective_scan.chunk import CHUNK_SIZE, selective_scan_fwd
from fusedscan.selective_scan.chunk_backward import (
    BACKWARD_PLANS, BWD_BLOCK_T, selective_scan_bwd,
)
from fusedscan.selective_scan.options import BCLayout
from fusedscan.utils.launch import LaunchPlan
from reference import forward_tolerance, grad_tolerance, selective_scan_ref
from tests.conftest import DEVICE, ON_GPU
from tests.helpers import (
    BC_KINDS, DTYPES, OPTIONS, combination_case, launcher_args, make_case, misaligned,
    nan_filled_outputs, option_ids, rel_err, strided_case, to_double,
)

# (batch, dim, L, N): dim not a multiple of the channel block, L odd and over two chunks.
SHAPE = (2, 68, CHUNK_SIZE + 101, 16) if ON_GPU else (2, 6, CHUNK_SIZE + 5, 2)
# The 2^10 combinations of the options: one batch row in the interpreter (CI's time).
COMBINATION_SHAPE = SHAPE if ON_GPU else (1, *SHAPE[1:])
ARG_NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
KWARG_GRADS = ["initial_state", "delta_scale", "a_scale"]


def _leaves(args, kwargs, convert):
    """Fresh leaf tensors (convert applied) for every input that gets a gradient."""
    args, kwargs = list(args), dict(kwargs)
    leaves = {}
    for i, name in enumerate(ARG_NAMES):
        if torch.is_tensor(args[i]):
            args[i] = leaves[name] = convert(args[i]).detach().requires_grad_(True)
    for name in KWARG_GRADS:
        if torch.is_tensor(kwargs.get(name)):
            kwargs[name] = leaves[name] = convert(kwargs[name]).detach().requires_grad_(True)
    return args, kwargs, leaves


def output_grads(out, last, seed, dtype):
    """Random gradients for out and last_state from `seed`; g_out is representable in dtype
    (autograd hands it to the backward pass in out's dtype)."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    g_out = torch.randn(out.shape, generator=gen, device=DEVICE).to(dtype)
    g_last = torch.randn(last.shape, generator=gen, device=DEVICE) if last is not None else None
    return g_out, g_last


def gradients(fn, args, kwargs, return_last_state, use_out, seed, convert):
    """Gradients of Σ out·g_out (if use_out) + Σ last_state·g_last (if return_last_state); g_out
    is rounded to the given inputs' dtype for the fused and the float64 run alike. Returns
    (gradients by input name, the leaves they belong to, {"out": out, "last_state": last})."""
    dtype = args[0].dtype
    args, kwargs, leaves = _leaves(args, kwargs, convert)
    result = fn(*args, return_last_state, **kwargs)
    out, last = result if return_last_state else (result, None)
    g_out, g_last = output_grads(out, last, seed, dtype)
    loss = (out * convert(g_out)).sum() if use_out else 0
    if return_last_state:
        loss = loss + (last * convert(g_last)).sum()
    # Unused inputs (D and z when only last_state is used) get zero gradients.
    grads = torch.autograd.grad(loss, list(leaves.values()), materialize_grads=True)
    outputs = {"out": out, "last_state": last} if return_last_state else {"out": out}
    return dict(zip(leaves, grads)), leaves, outputs


def check(args, kwargs, dtype, return_last_state=True, use_out=True):
    """Fused outputs and gradients against the float64 reference's; returns the gradients'
    relative errors."""
    seed = int(torch.randint(0, 2**31, ()))
    with nan_filled_outputs():
        grads, leaves, outputs = gradients(selective_scan_ext, args, kwargs, return_last_state,
                                           use_out, seed, lambda x: x)
    ref, _, ref_outputs = gradients(selective_scan_ref, args, kwargs, return_last_state, use_out,
                                    seed, to_double)
    assert outputs["out"].dtype == args[0].dtype
    assert not return_last_state or outputs["last_state"].dtype == torch.float32
    output_errors = {k: rel_err(v, ref_outputs[k]) for k, v in outputs.items()}
    assert max(output_errors.values()) <= forward_tolerance(dtype), output_errors
    errors = {}
    for name, g in grads.items():
        assert g.dtype == leaves[name].dtype and g.shape == leaves[name].shape, name
        errors[name] = rel_err(g, ref[name])
    bad = {n: e for n, e in errors.items() if not e <= grad_tolerance(n, dtype)}
    assert not bad, (bad, errors)
    return errors


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=len(OPTIONS))),
                         ids=option_ids)
def test_every_combination_of_options(flags):
    """All 2^10 combinations of the options, forward and backward: out (and last_state with
    return_last_state; off, out's gradient only) and every gradient. The forward's own
    combination test is this one (tests/test_selective_scan.py)."""
    args, kwargs, dtype, return_last_state = combination_case(flags, COMBINATION_SHAPE)
    check(args, kwargs, dtype, return_last_state)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B_kind", BC_KINDS)
@pytest.mark.parametrize("C_kind", BC_KINDS)
def test_dtypes_and_bc_kinds(dtype, B_kind, C_kind):
    args, kwargs = make_case(*SHAPE, dtype=dtype, B_kind=B_kind, C_kind=C_kind,
                             initial_state=True, delta_threshold=True, a_scale="dim",
                             delta_scale="tensor")
    check(args, kwargs, dtype)


@pytest.mark.parametrize("B_groups,C_groups", [(1, 4), (4, 2), (3, 6)])
def test_group_counts(B_groups, C_groups):
    """dB and dC summed over the channels of each group, with different group counts."""
    batch, _, L, dstate = SHAPE
    dim = 96 if ON_GPU else 12
    args, kwargs = make_case(batch, dim, L, dstate)
    args[3] = torch.randn(batch, B_groups, dstate, L, device=DEVICE)
    args[4] = torch.randn(batch, C_groups, dstate, L, device=DEVICE)
    check(args, kwargs, torch.float32)


# The interpreter's time grows with N: 17 (two groups) stands for every N over one group there.
@pytest.mark.parametrize("dstate", [1, 5, 17] + ([16, 40, 64, 256] if ON_GPU else []))
def test_state_sizes(dstate):
    """N over one unrolled group of 16: the states' carries go through the scratch."""
    batch, dim, L, _ = SHAPE
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True, a_scale="dim_n",
                             B_kind="fixed", C_kind="grouped")
    check(args, kwargs, torch.float32)


LENGTHS = [1, 2, BWD_BLOCK_T - 1, BWD_BLOCK_T, BWD_BLOCK_T + 1, CHUNK_SIZE, CHUNK_SIZE + 1,
           3 * CHUNK_SIZE + 7]


@pytest.mark.parametrize("L", LENGTHS)
def test_lengths(L):
    batch, dim, _, dstate = SHAPE
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True)
    check(args, kwargs, torch.float32)


@pytest.mark.parametrize("K", [1, 2, CHUNK_SIZE + 3])
def test_keep_counts(K):
    """Gradients of u, delta, z, B, C are full length with zeros where nothing was kept. (With
    K = 1 and no initial state the exact dA is 0 and a relative error is meaningless: the
    initial state keeps it nonzero.)"""
    batch, dim, _, dstate = SHAPE
    L = max(2 * K, 40)
    args, kwargs = make_case(batch, dim, L, dstate, keep=K, delta_threshold=True,
                             initial_state=True)
    errors = check(args, kwargs, torch.float32)
    assert set(errors) >= {"u", "delta", "z", "B", "C"}


# Positions per tile of the main kernel where a test needs several tiles per segment (the
# interpreter's default is one).
TILE = 8 if ON_GPU else 4


def check_bwd_launch(args, kwargs, layout, **launch):
    """selective_scan_bwd with a forced launch option against the reference's gradients."""
    inputs = launcher_args(args, kwargs)
    out, last, chunk_states = selective_scan_fwd(*inputs, layout)
    g_out, g_last = output_grads(out, last, 7, out.dtype)
    with nan_filled_outputs():
        grads = selective_scan_bwd(g_out, g_last, *inputs, layout, chunk_states, **launch)
    ref, *_ = gradients(selective_scan_ref, args, kwargs, True, True, 7, to_double)
    names = ARG_NAMES + ["initial_state", "delta_scale", "a_scale"]
    for name, g in zip(names, grads):
        assert (g is None) == (name not in ref), name
        if g is not None:
            assert rel_err(g, ref[name]) <= 1e-4, name


# (In the interpreter 2 · BWD_BLOCK_T is CHUNK_SIZE: two lengths there.)
@pytest.mark.parametrize("range_length", sorted({BWD_BLOCK_T, 2 * BWD_BLOCK_T, CHUNK_SIZE}))
@pytest.mark.parametrize("dstate", [3, 20 if ON_GPU else 17])
def test_range_lengths(range_length, dstate):
    """The main backward kernel's programs cover ranges shorter than a chunk (their start
    states recomputed from the saved chunk states) or whole chunks (read directly), in
    segments of several tiles."""
    batch, dim, _, _ = SHAPE
    L = 3 * CHUNK_SIZE - 5
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True, delta_threshold=True,
                             a_scale="dim", keep=L - 7)
    check_bwd_launch(args, kwargs, BCLayout(), range_length=range_length, tile=TILE)


@pytest.mark.parametrize("groups,block_d", [(1, 4 if ON_GPU else 2), (2, 8 if ON_GPU else 2),
                                            (1, 64)])
@pytest.mark.parametrize("group", [1, 3])
def test_channel_blocks(groups, block_d, group):
    """The main backward kernel's programs each own block_d channels; their partial dB/dC are
    summed over the blocks of each B/C group afterwards. States in unrolled groups of `group`
    (their carries through the program's scratch), segments of several tiles."""
    batch, _, L, dstate = SHAPE
    dim = 4 * (8 if ON_GPU else 2)  # several channel blocks per group
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True, a_scale="dim_n")
    args[3] = torch.randn(batch, groups, dstate, L, device=DEVICE)
    check_bwd_launch(args, kwargs, BCLayout(B_groups=groups), block_d=block_d, group=group,
                     tile=TILE)


WHOLE_WARP_CASES = [(1, "variable", "variable"), (2, "variable", "fixed"),
                    (3, "grouped", "variable"), (4, "variable", "grouped")]


# On a GPU every count of positions per tile, over 1 to 8 warps of 32 channels, and of 16
# channels over two lanes each (a tile of 8 float32 positions, 16 bytes per lane; with groups of
# an even count of states the scratch's states go in pairs), each case with the warps' sums
# exchanged per group or per tile. The interpreter: one warp, one batch row (its time grows
# with the channels), three of them.
@pytest.mark.parametrize(
    "num_warps,tile,lanes,group,B_kind,C_kind,sums_per_tile",
    [(w, t, 1, *case, per_tile) for w in (1, 2, 4, 8) for t in (1, 4, 8, 16)
     for case in WHOLE_WARP_CASES for per_tile in (0, 1)]
    + [(w, 8, 2, *case, per_tile) for w in (1, 4) for case in WHOLE_WARP_CASES
       for per_tile in (0, 1)] if ON_GPU else
    [(1, 8, 1, *WHOLE_WARP_CASES[1], 0), (1, 4, 1, *WHOLE_WARP_CASES[2], 1),
     (1, 8, 2, 2, "variable", "variable", 1)])
def test_channel_blocks_of_whole_warps(num_warps, tile, lanes, group, B_kind, C_kind,
                                       sums_per_tile):
    """32 channels per warp, as the main kernel's default on a GPU, or 16 over two lanes each:
    the sums over the block's channels of variable dB and dC go through warp_sums (shuffles
    between a warp's lanes), of every count of states and positions per tile, for several
    channel blocks per B/C group and a partial last block, the warps' sums added per group of
    states or once per tile from the program's scratch. (The interpreter runs the same steps,
    one warp.)"""
    batch, _, L, _ = SHAPE if ON_GPU else (1, None, 3 * BWD_BLOCK_T + 1, None)
    block_d = 32 // lanes * num_warps
    # A block must not straddle two groups of B or C: whole blocks there.
    grouped = "grouped" in (B_kind, C_kind)
    dim = 4 * block_d if grouped else 3 * block_d - 5
    args, kwargs = make_case(batch, dim, L, 5, B_kind=B_kind, C_kind=C_kind,
                             initial_state=True, a_scale="dim_n")
    layout = BCLayout(B_variable=B_kind != "fixed", C_variable=C_kind != "fixed",
                      B_groups=args[3].shape[1] if B_kind == "grouped" else 1,
                      C_groups=args[4].shape[1] if C_kind == "grouped" else 1)
    check_bwd_launch(args, kwargs, layout, block_d=block_d, num_warps=num_warps,
                     group=group, tile=tile, sums_per_tile=bool(sums_per_tile))


def test_gradient_through_last_state_only():
    """out unused: autograd passes no gradient for it."""
    args, kwargs = make_case(*SHAPE, initial_state=True)
    check(args, kwargs, torch.float32, return_last_state=True, use_out=False)


def test_chunked_processing_matches_one_pass():
    """Gradients flow from the second half's loss through last_state → initial_state into the
    first half: two calls give the gradients of one call over the whole sequence."""
    batch, dim, L, dstate = SHAPE
    args, _ = make_case(batch, dim, L, dstate)
    half = L // 2
    leaves = [a.detach().clone().requires_grad_(True) if torch.is_tensor(a) else a for a in args]

    def loss(outs):
        g = torch.Generator(device=DEVICE).manual_seed(3)
        return (torch.cat(outs, dim=2) * torch.randn(batch, dim, L, generator=g,
                                                     device=DEVICE)).sum()

    full = torch.autograd.grad(loss([selective_scan_ext(*leaves)]), leaves[:8])

    def part(a, lo, hi):
        return a[..., lo:hi] if torch.is_tensor(a) and a.dim() >= 3 and a.shape[-1] == L else a

    out1, h = selective_scan_ext(*[part(a, 0, half) for a in leaves], True)
    out2 = selective_scan_ext(*[part(a, half, L) for a in leaves], initial_state=h)
    chunked = torch.autograd.grad(loss([out1, out2]), leaves[:8])
    for name, g1, g2 in zip(ARG_NAMES, full, chunked):
        assert rel_err(g2, g1) <= 1e-5, name


def test_threshold_stops_the_gradient_to_delta():
    """Where Δ̂ <= threshold the token is skipped: ∂L/∂delta is exactly 0 there."""
    batch, dim, L, dstate = SHAPE
    args, kwargs = make_case(batch, dim, L, dstate)
    thr = torch.full((dim,), float("-inf"), device=DEVICE)
    thr[::2] = 1e30  # every token of the even channels is filtered
    kwargs["delta_threshold"] = thr
    grads, *_ = gradients(selective_scan_ext, args, kwargs, True, True, 5, lambda x: x)
    assert torch.all(grads["delta"][:, ::2] == 0)
    assert torch.all(grads["delta"][:, 1::2] != 0)


def test_launch_plans_follow_the_signature():
    """Backward launch plans are kept per signature: a second call with fresh values reuses
    them, an unaligned u and dout get their own; every gradient is right."""
    BACKWARD_PLANS.clear()
    for variant in (lambda x: x, lambda x: x, misaligned):
        args, kwargs = make_case(*SHAPE, dtype=torch.bfloat16)
        args[0] = variant(args[0])
        check(args, kwargs, torch.bfloat16)
    assert len(BACKWARD_PLANS) == 2


DOUT_LAYOUTS = {
    "contiguous": lambda g: g,
    "expanded": lambda g: g[:1, :1, :1].expand(g.shape),  # what out.sum() hands over
    "misaligned": misaligned,
    "transposed": lambda g: g.transpose(1, 2).contiguous().transpose(1, 2),
}


def test_output_gradient_in_any_layout():
    """Autograd hands the backward pass out's gradient in out's dtype and shape but in any
    strides and alignment: each layout gets its own launch plans (the plans are keyed by
    them), one after another on the same forward signature; every gradient is right."""
    args, kwargs = make_case(*SHAPE, initial_state=True)
    ref_args, ref_kwargs, ref_leaves = _leaves(args, kwargs, to_double)
    for name in [*DOUT_LAYOUTS, "contiguous"]:
        run_args, run_kwargs, leaves = _leaves(args, kwargs, lambda x: x)
        out = selective_scan_ext(*run_args, **run_kwargs)
        dout = DOUT_LAYOUTS[name](torch.randn_like(out))
        with nan_filled_outputs():
            grads = torch.autograd.grad(out, list(leaves.values()), dout)
        ref_out = selective_scan_ref(*ref_args, **ref_kwargs)
        ref = torch.autograd.grad(ref_out, list(ref_leaves.values()), dout.double())
        for leaf, g, r in zip(leaves, grads, ref):
            assert rel_err(g, r) <= grad_tolerance(leaf, torch.float32), (name, leaf)


def test_backward_launcher_only_allocates_views_and_launches(monkeypatch):
    """The backward launcher's default path (Mamba's options) runs its three kernels and no
    torch computation: the sums over programs and the casts of dB and dC are its own kernel's
    work (each torch operation costs host time on every call: docs/kernel-log.md)."""
    args, kwargs = make_case(*SHAPE, dtype=torch.bfloat16)
    inputs = launcher_args(args, kwargs)
    out, last, chunk_states = selective_scan_fwd(*inputs, BCLayout())
    g_out = torch.randn_like(out)
    selective_scan_bwd(g_out, None, *inputs, BCLayout(), chunk_states)  # builds the plan
    launches, ops = [], []
    monkeypatch.setattr(LaunchPlan, "__call__",
                        lambda plan, *a: launches.append(plan.kernel.fn.__name__))

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Record():
        selective_scan_bwd(g_out, None, *inputs, BCLayout(), chunk_states)
    assert launches == ["bwd_range_aggregates_kernel", "bwd_main_kernel", "bwd_sums_kernel"]
    assert set(ops) <= {"empty", "empty_like", "new_empty", "empty_strided", "split_with_sizes",
                        "view"}, ops


def test_non_contiguous_inputs():
    """Transposed activations; strided D, delta_bias, scales, threshold and initial state."""
    args, kwargs = strided_case(*SHAPE)
    check(args, kwargs, torch.float32)


@pytest.mark.parametrize("options", [
    dict(),
    dict(initial_state=True, delta_scale="tensor", a_scale="dim_n", B_kind="fixed"),
    dict(delta_softplus=False, a_scale="dim", C_kind="grouped", keep=5, delta_threshold=True),
], ids=["plain", "state-scales-fixedB", "keep-threshold-groupedC"])
def test_gradcheck_float64(options):
    """Finite differences on a tiny float64 case (the kernels compute in float64 then). The
    interpreter checks one random direction per input (gradcheck's fast mode): the full
    Jacobian takes two forward passes per input element, minutes there."""
    args, kwargs = make_case(1, 4, 9, 2, **options)
    args, kwargs, leaves = _leaves(args, kwargs, to_double)
    args = [to_double(a) for a in args]
    kwargs = {k: to_double(v) for k, v in kwargs.items()}
    names = list(leaves)

    def fn(*xs):
        a, k = list(args), dict(kwargs)
        for name, x in zip(names, xs):
            if name in ARG_NAMES:
                a[ARG_NAMES.index(name)] = x
            else:
                k[name] = x
        return selective_scan_ext(*a, True, **k)

    assert torch.autograd.gradcheck(fn, tuple(leaves.values()), fast_mode=not ON_GPU)


def test_backward_is_deterministic():
    """Two backward passes on the same inputs give bitwise the same gradients."""
    shape = (2, 256, 4099, 16) if ON_GPU else SHAPE
    args, kwargs = make_case(*shape, dtype=torch.bfloat16, initial_state=True,
                             a_scale="dim", delta_scale="tensor")
    first, *_ = gradients(selective_scan_ext, args, kwargs, True, True, 11, lambda x: x)
    second, *_ = gradients(selective_scan_ext, args, kwargs, True, True, 11, lambda x: x)
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_saved_tensors_are_inputs_and_chunk_states():
    """What the forward pass keeps for backward: its inputs, plus one float32 state per chunk
    (batch·dim·⌈L/chunk⌉·N values; mamba-ssm keeps 2N per 2048 positions)."""
    batch, dim, L, dstate = SHAPE
    args, kwargs = make_case(batch, dim, L, dstate, initial_state=True)
    args, kwargs, leaves = _leaves(args, kwargs, lambda x: x)
    inputs = {x.data_ptr() for x in [*args, *kwargs.values()] if torch.is_tensor(x)}
    extra = []

    def pack(t):
        if t.data_ptr() not in inputs:
            extra.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        selective_scan_ext(*args, True, **kwargs)
    n_chunks = -(-L // CHUNK_SIZE)
    assert [tuple(t.shape) for t in extra] == [(batch, dim, n_chunks, dstate)]
    assert extra[0].dtype == torch.float32
