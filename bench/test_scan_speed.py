"""Speed of selective_scan_ext against mamba-ssm's CUDA selective_scan_fn and the reference
(fixtures and timing in bench/conftest.py, inputs and calls in bench/scan_cases.py).

    pytest bench/ --benchmark-only --bench-csv bench.csv
"""

import pytest

from scan_cases import (
    DTYPES, INPUT_SETS, SHAPES, fused_forward, fused_forward_backward, make_inputs, mamba_calls,
    reference_forward, shape_id,
)

GRID = [pytest.param(dtype, shape, id=f"{dtype}-{shape_id(shape)}")
        for dtype in DTYPES for shape in SHAPES]
KEEP_SHAPES = [(1, 1536, 32768), (1, 1536, 131072)]


def input_sets(shape, dtype, **kw):
    return [make_inputs(shape, DTYPES[dtype], **kw) for _ in range(INPUT_SETS)]


@pytest.mark.parametrize("pass_", ["forward", "forward_backward"])
@pytest.mark.parametrize("impl", ["fusedscan", "mamba-ssm"])
@pytest.mark.parametrize("dtype,shape", GRID)
def test_grid(request, gpu, measure, impl, pass_, dtype, shape):
    """The shape grid, Mamba's options, fusedscan against mamba-ssm."""
    if impl == "mamba-ssm":
        fwd, fwd_bwd, _ = mamba_calls(request.getfixturevalue("mamba"))
    else:
        fwd, fwd_bwd = fused_forward, fused_forward_backward
    sets = input_sets(shape, dtype, requires_grad=pass_ == "forward_backward")
    measure(fwd if pass_ == "forward" else fwd_bwd, sets, group="grid", impl=impl,
            pass_=pass_, dtype=dtype, shape=shape_id(shape))


@pytest.mark.parametrize("pass_", ["forward", "forward_backward"])
@pytest.mark.parametrize("dtype,shape", GRID)
def test_extensions(gpu, measure, pass_, dtype, shape):
    """delta_threshold, a_scale and delta_scale on: the overhead over test_grid's fusedscan."""
    sets = input_sets(shape, dtype, requires_grad=pass_ == "forward_backward", extensions=True)
    measure(fused_forward if pass_ == "forward" else fused_forward_backward, sets,
            group="extensions", impl="fusedscan+ext", pass_=pass_, dtype=dtype,
            shape=shape_id(shape))


@pytest.mark.parametrize("impl", ["fusedscan", "gather+mamba-ssm"])
@pytest.mark.parametrize("fraction", [4, 16])
@pytest.mark.parametrize("shape", KEEP_SHAPES, ids=shape_id)
def test_keep_idx(request, gpu, measure, impl, fraction, shape):
    """DeciMamba's selection, K = L/4 and L/16 kept positions (bf16, forward): fusedscan's
    keep_idx against a PyTorch gather followed by mamba-ssm's scan."""
    sets = input_sets(shape, "bfloat16", keep=shape[2] // fraction)
    if impl == "fusedscan":
        fn = fused_forward
    else:
        fn = mamba_calls(request.getfixturevalue("mamba"))[2]
    measure(fn, sets, group="keep_idx", impl=impl, pass_="forward", dtype="bfloat16",
            shape=shape_id(shape), keep=f"L/{fraction}")


def test_reference(gpu, measure):
    """The float32 PyTorch reference at the smallest shape of the grid, for scale."""
    shape = SHAPES[0]
    measure(reference_forward, input_sets(shape, "float32"), rounds=2, group="reference",
            impl="reference", pass_="forward", dtype="float32", shape=shape_id(shape))
