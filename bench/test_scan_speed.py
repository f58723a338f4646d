"""Speed of selective_scan_ext against mamba-ssm's CUDA selective_scan_fn and the reference,
isolated calls, and whole models (fixtures and timing in bench/conftest.py, inputs and calls in
bench/scan_cases.py and bench/model_cases.py).

    pytest bench/ --benchmark-only --bench-csv bench.csv
"""

import pytest

import mamba_ssm_cuda
import model_cases
from scan_cases import (
    DTYPES, INPUT_SETS, SHAPES, fused_forward, fused_forward_backward, make_inputs, mamba_calls,
    reference_forward, shape_id,
)

GRID = [pytest.param(dtype, shape, id=f"{dtype}-{shape_id(shape)}")
        for dtype in DTYPES for shape in SHAPES]
KEEP_SHAPES = [(1, 1536, 32768), (1, 1536, 131072)]
LATENCY_SHAPES = [(1, 1536, 512), (1, 1536, 2048)]
MODEL_IMPLS = ["mamba-ssm", "fusedscan", "fusedscan+decimamba", "hf+fusedscan"]


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


@pytest.mark.parametrize("pass_", ["forward", "forward_backward"])
@pytest.mark.parametrize("shape", LATENCY_SHAPES, ids=shape_id)
def test_latency(mamba_or_why, measure_isolated, pass_, shape):
    """One call as a model layer makes it (bf16, Mamba's options): its wall time with the GPU
    idle before and after, its host time, and its time back to back; fusedscan's and
    mamba-ssm's calls interleaved (fusedscan alone where mamba-ssm is not built)."""
    mamba_fn, _ = mamba_or_why
    calls = {"fusedscan": (fused_forward, fused_forward_backward)}
    if mamba_fn is not None:
        calls["mamba-ssm"] = mamba_calls(mamba_fn)[:2]
    sets = input_sets(shape, "bfloat16", requires_grad=pass_ == "forward_backward")
    measure_isolated({impl: fns[pass_ == "forward_backward"] for impl, fns in calls.items()},
                     sets, reps=200, host=True, group="latency", pass_=pass_,
                     dtype="bfloat16", shape=shape_id(shape))


@pytest.fixture(scope="module")
def models(gpu):
    """The models of bench/model_cases.py, built once."""
    try:
        mamba_ssm_cuda.load_package()
    except mamba_ssm_cuda.Unavailable as e:
        pytest.skip(f"mamba-ssm not available: {e}")
    return dict(model_cases.models(MODEL_IMPLS))


@pytest.mark.parametrize("length", model_cases.LENGTHS)
@pytest.mark.parametrize("impl", MODEL_IMPLS)
def test_model(models, measure_isolated, impl, length):
    """Prefill of one prompt through the backbone, mamba-130m shape, bf16: mamba-ssm's own
    model, the same model patched (no method, DeciMamba) and Hugging Face's model patched."""
    sets = [model_cases.tokens(length, seed) for seed in range(2)]
    measure_isolated({impl: lambda x: model_cases.backbone_forward(models[impl], x)}, sets,
                     reps=20 if length <= 8192 else 5, group="model", pass_="forward",
                     dtype="bfloat16", shape=f"1x{length}")
