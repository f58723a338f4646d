"""apply_fusedscan on tiny, randomly initialised Mamba language models built from each
library's own config classes (tests/model_libs.py): method=None against the unpatched model
(logits, generate(), training gradients), every method against the plain composition of
reference/mamba_model.py, decoding after a prefill against a longer reference prefill, the Δ̂
recorder, torch.compile and a CUDA graph of a decoding step."""

import copy
import importlib

import pytest
import torch

from fusedscan import DecimationSchedule, calibrate_longmamba
from fusedscan import (DeciMamba, DeltaRecorder, LongMamba, MambaExtend, Modulation,
                       apply_fusedscan, kept_positions, record_delta_hats, remove_fusedscan)
from reference.decimamba import decimate_from_scores_ref, decimation_scores_ref, \
    schedule_num_kept_ref
from reference.mamba_model import mamba_forward_ref, mixer_ref
from reference.modulation import scale_spectrum_ref
from tests.conftest import DEVICE, ON_GPU
from tests.helpers import rel_err
from tests.model_libs import DT_RANK, HIDDEN, LAYERS, LIBS, N, VOCAB

L = 37 if ON_GPU else 23
# float64 against the reference: the kernels take float scales and log2 e as float32 scalar
# arguments (about 1e-8 relative); a method's effect is checked to be far larger.
F64_TOL = 1e-7
METHODS = ["decimamba", "decimamba-two-layers", "longmamba", "modulation-power",
           "modulation-linear", "mambaextend"]


@pytest.fixture(params=list(LIBS))
def lib(request):
    lib = LIBS[request.param]
    try:
        importlib.import_module(lib.module)
    except ImportError as e:
        pytest.skip(f"{lib.module} is not installed ({e})")
    return lib


def ids(batch=2, length=L):
    return torch.randint(1, VOCAB, (batch, length), device=DEVICE)


def no_options(layer):
    return {}


def no_selection(layer, delta, delta_bias):
    return None


def reference_hidden(lib, model, x, options=no_options, select=no_selection):
    """reference/mamba_model.py on a float64 copy of the model: the final hidden states (the
    language-model head's input) and the kept positions."""
    with torch.no_grad():
        return mamba_forward_ref(*lib.parts(copy.deepcopy(model).double()), x, DT_RANK, N,
                                 options, select)


def schedule_select(schedule):
    """DeciMamba's selection written with reference/: the s-th decimating layer keeps k_s."""
    def select(layer, delta, delta_bias):
        if layer not in schedule.layers:
            return None
        s = schedule.layers.index(layer)
        k = schedule_num_kept_ref(s, delta.shape[-1], schedule.L_base, schedule.beta,
                                  schedule.min_seq_len, schedule.keep_last)
        scores = decimation_scores_ref(delta, delta_bias)
        return decimate_from_scores_ref(scores, k, schedule.keep_last).to(delta.device)
    return select


def record(model, x):
    return record_delta_hats(model, x.split(1))


def method_case(lib, name, model):
    """(method object, options(layer), select) of the reference composition for it."""
    if name.startswith("decimamba"):
        layers = (1,) if name == "decimamba" else (1, 2)
        schedule = DecimationSchedule(layers=layers, L_base=12, beta=0.5, min_seq_len=4)
        return DeciMamba(schedule), no_options, schedule_select(schedule)
    if name == "longmamba":
        # Calibrated on length-8 sequences with a theta that makes some channels global, and
        # filtering from length 9, so that at length L their thresholds are real numbers.
        recorder = record(model, ids(3, 8))
        calibration = calibrate_longmamba(recorder.delta_hats, recorder.A, theta=0.05,
                                          min_length=9)
        assert any(torch.isfinite(calibration.delta_threshold(L, layer)).any()
                   for layer in calibration.layers)
        assert any(g > 0 for g, _ in calibration.summary().values())
        return LongMamba(calibration), lambda layer: {
            "delta_threshold": calibration.delta_threshold(L, layer, DEVICE).double()}, \
            no_selection
    scales = [0.7, 1.0, 1.3, 0.5]
    if name == "mambaextend":
        return MambaExtend(scales), lambda layer: {"delta_scale": scales[layer]}, no_selection
    form = name.split("-")[1]
    mixers = [mixer for _, mixer in lib.parts(model)[1]]

    def options(layer):
        A = -torch.exp(mixers[layer].A_log.double())
        return {"A": scale_spectrum_ref(A, scales[layer], form)}
    return Modulation(scales, form=form), options, no_selection


@pytest.mark.parametrize("dtype", [torch.float32] + ([torch.bfloat16] if ON_GPU else []),
                         ids=str)
def test_method_none_matches_unpatched_and_remove_restores(lib, dtype):
    """bf16: the libraries' own paths round to bf16 between their steps, fusedscan's scan
    computes in float32 inside, hence the wider tolerance."""
    model, x = lib.build(dtype), ids()
    with torch.no_grad():
        before = lib.logits(model, x)
        patched = lib.logits(apply_fusedscan(model), x)
        assert kept_positions(model) is None
        restored = lib.logits(remove_fusedscan(model), x)
    assert patched.dtype == before.dtype
    assert rel_err(patched, before) < (1e-5 if dtype == torch.float32 else 2e-2)
    assert torch.equal(restored, before)
    with pytest.raises(ValueError, match="not patched"):
        kept_positions(model)


def test_generate_matches_unpatched(lib):
    model, x = lib.build(), ids(2, 11)
    with torch.no_grad():
        want, want_scores = lib.generate(model, x, 4)
        got, got_scores = lib.generate(apply_fusedscan(model), x, 4)
    assert torch.equal(got, want)
    assert len(got_scores) == len(want_scores) == 4
    for s_got, s_want in zip(got_scores, want_scores):
        assert rel_err(s_got, s_want) < 1e-5


@pytest.mark.parametrize("name", ["decimamba", "modulation-power"])
def test_generate_with_a_method_is_prefill_then_steps(lib, name):
    """generate() with a method equals greedy decoding written out: a prefill with a cache,
    then one token at a time from it."""
    model, x, steps = lib.build(), ids(), 3
    apply_fusedscan(model, method_case(lib, name, model)[0])
    with torch.no_grad():
        got, got_scores = lib.generate(model, x, steps)
        logits, cache = lib.prefill_logits(model, x)
        tokens, scores = [], []
        for _ in range(steps):
            scores.append(logits[:, -1])
            tokens.append(scores[-1].argmax(-1, keepdim=True))
            logits = lib.step_logits(model, tokens[-1], cache)
    assert torch.equal(got[:, L:], torch.cat(tokens, 1))
    for s_got, s_want in zip(got_scores, scores, strict=True):
        assert rel_err(s_got, s_want) < 1e-6


@pytest.mark.parametrize("name", METHODS)
def test_method_matches_reference(lib, name):
    model = lib.build(torch.float64, plain=True)
    method, options, select = method_case(lib, name, model)
    x = ids()
    want, positions = reference_hidden(lib, model, x, options, select)
    with torch.no_grad():
        got, logits = lib.hidden_and_logits(apply_fusedscan(model, method), x)
    assert logits.shape == (*want.shape[:2], VOCAB)
    assert got.shape == want.shape
    assert rel_err(got, want) < F64_TOL
    if name.startswith("decimamba"):
        assert torch.equal(kept_positions(model).cpu(), positions.cpu())
        assert positions.shape[1] < L and not torch.equal(positions[0], positions[1])
        assert torch.equal(positions[:, -1].cpu(), torch.full((2,), L - 1))
    else:
        assert kept_positions(model) is None
        plain, _ = reference_hidden(lib, model, x)
        assert rel_err(want, plain) > 10 * F64_TOL  # the method changes the model


@pytest.mark.parametrize("name", ["none", "decimamba", "longmamba", "modulation-power",
                                  "mambaextend"])
def test_decoding_after_prefill_matches_reference(lib, name):
    """A prefill with a cache, then single-token steps: each step's hidden state equals the
    reference over the whole sequence so far. After a decimated prefill the decimating layer
    keeps the prefill's positions and every new one."""
    model = lib.build(torch.float64, plain=True)
    method, options, select = None, no_options, no_selection
    if name != "none":
        method, options, select = method_case(lib, name, model)
    if name == "longmamba":  # one threshold for prefill and steps: the length fixed
        method = LongMamba(method.calibration, length=L)
    T, x = 3, ids(2, L + 3)
    apply_fusedscan(model, method)
    with torch.no_grad():
        _, cache = lib.prefill(model, x[:, :L])
        prefill_keep = kept_positions(model)
        for t in range(T):
            if prefill_keep is not None:
                new = torch.arange(L, L + t + 1, device=DEVICE).expand(2, -1)
                keep = torch.cat([prefill_keep, new], 1)
                select = lambda layer, delta, bias, keep=keep: keep if layer == 1 else None  # noqa: E731
            want, _ = reference_hidden(lib, model, x[:, :L + t + 1], options, select)
            got = lib.step(model, x[:, L + t:L + t + 1], cache)
            assert rel_err(got[:, -1], want[:, -1]) < F64_TOL


def test_training_gradients_match_unpatched(lib):
    """A training step's gradients. The unpatched model runs in eval mode, which computes the
    same function: in train mode transformers picks mamba-ssm's fused path when mamba-ssm is
    importable, and that needs causal-conv1d as well."""
    model, x = lib.build(), ids()
    grads = []
    for patch in (False, True):
        if patch:
            apply_fusedscan(model)
        model.train(patch)
        model.zero_grad()
        lib.loss(model, x).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        assert rel_err(grads[1][name], grads[0][name]) < 1e-4, name


def test_delta_recorder_records_each_layer_delta_hat(lib):
    model, x = lib.build(torch.float64, plain=True), ids(2, 9)
    recorder = record(model, x)
    with pytest.raises(ValueError, match="not patched"):  # record_delta_hats restored it
        kept_positions(model)
    embeddings, blocks, _ = lib.parts(model)
    assert set(recorder.delta_hats) == set(range(LAYERS))
    with torch.no_grad():
        h = embeddings(x)
        for layer, (norm, mixer) in enumerate(blocks):
            xi = mixer.in_proj(norm(h)).transpose(1, 2).chunk(2, 1)[0]
            xi = torch.nn.functional.silu(mixer.conv1d(xi)[..., :x.shape[1]])
            dt = mixer.x_proj(xi.transpose(1, 2))[..., :DT_RANK]
            want = torch.nn.functional.softplus(mixer.dt_proj(dt)).transpose(1, 2)
            got = torch.stack(recorder.delta_hats[layer]).to(want)
            assert rel_err(got, want) < 1e-6
            assert torch.equal(recorder.A[layer], -torch.exp(mixer.A_log.float()).cpu())
            h = h + mixer_ref(mixer, norm(h), DT_RANK, N, {}, lambda delta, bias: None)[0]


def test_bad_arguments(lib, monkeypatch):
    model = lib.build()
    with pytest.raises(TypeError, match="method"):
        apply_fusedscan(model, "decimamba")
    with pytest.raises(TypeError, match="model"):
        apply_fusedscan(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="schedule"):
        DeciMamba((1,))
    with pytest.raises(ValueError, match="scales"):
        MambaExtend([1.0, -2.0])
    with pytest.raises(TypeError, match="scales"):
        Modulation("0.5")
    with pytest.raises(ValueError, match="form"):
        Modulation(0.5, form="cubic")
    with pytest.raises(ValueError, match="not patched"):
        DeltaRecorder(model)
    # A method naming a layer the model does not have would do nothing there, silently.
    calibration = calibrate_longmamba({LAYERS: torch.rand(2 * HIDDEN, 8)},
                                      {LAYERS: -torch.rand(2 * HIDDEN, N)}, theta=0.05)
    for method, what, missing in [
            (DeciMamba(DecimationSchedule(layers=(1, LAYERS + 8))), "schedule.layers",
             [LAYERS + 8]),
            (LongMamba(calibration), "calibration.layers", [LAYERS]),
            (MambaExtend([1.0] * (LAYERS + 1)), "scales", [LAYERS]),
            (Modulation({0: 0.5, LAYERS + 2: 0.5}), "scales", [LAYERS + 2])]:
        with pytest.raises(ValueError) as info:
            apply_fusedscan(model, method)
        assert f"{what} name layers {missing}" in str(info.value), str(info.value)
        assert f"layers {list(range(LAYERS))}" in str(info.value), str(info.value)
        assert "_fusedscan_patched" not in model.__dict__
    apply_fusedscan(model, MambaExtend([1.0] * LAYERS))
    with pytest.raises(ValueError, match="layers"):
        DeltaRecorder(apply_fusedscan(model), layers=[7])
    if lib.name == "transformers":  # the cache API fusedscan uses came with 5.17
        remove_fusedscan(model)
        monkeypatch.setattr(importlib.import_module("transformers"), "__version__", "4.57.6")
        with pytest.raises(ValueError, match="transformers >= 5.17"):
            apply_fusedscan(model)
        assert "forward" not in lib.backbone(model).__dict__
    if lib.name == "mamba_ssm":  # a bare mixer has no residual stream to gather
        mixer = lib.parts(model)[1][0][1]
        with pytest.raises(ValueError, match="DeciMamba needs"):
            apply_fusedscan(mixer, DeciMamba(DecimationSchedule(layers=(0,))))


@pytest.mark.parametrize("name", ["none", "decimamba", "longmamba", "modulation-power",
                                  "mambaextend"])
def test_compiled_model_matches_eager(lib, name):
    """torch.compile(fullgraph=True) of the patched backbone: no graph break (inductor on the
    GPU, aot_eager on the CPU interpreter)."""
    model = lib.build(plain=True)
    method = None if name == "none" else method_case(lib, name, model)[0]
    x = ids()
    apply_fusedscan(model, method)
    with torch.no_grad():
        want = lib.hidden(model, x)
        torch._dynamo.reset()
        compiled = torch.compile(lib.backbone(model), fullgraph=True,
                                 backend="inductor" if ON_GPU else "aot_eager")
        got = compiled(x)
        got = got if torch.is_tensor(got) else got.last_hidden_state
    assert rel_err(got, want) < 1e-5


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
def test_cuda_graph_of_a_decoding_step(lib):
    model, x = lib.build(), ids(2, L + 4)
    apply_fusedscan(model, Modulation(0.8))
    with torch.no_grad():
        _, cache = lib.prefill(model, x[:, :L])
        eager_cache = copy.deepcopy(cache)
        token = x[:, L:L + 1].clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a copy, so the real cache is untouched
            lib.step(model, token, copy.deepcopy(cache))
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = lib.step(model, token, cache)
        for t in range(4):
            token.copy_(x[:, L + t:L + t + 1])
            graph.replay()
            want = lib.step(model, x[:, L + t:L + t + 1], eager_cache)
            assert torch.equal(out, want)
