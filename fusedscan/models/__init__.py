"""Patch pretrained Mamba models in place so that their mixers run fusedscan's kernels, with a
length-extension method chosen by an object."""

import torch

from fusedscan.models import hf, mssm
from fusedscan.models.methods import DeciMamba, LongMamba, MambaExtend, Modulation, as_method

_LIBRARIES = (hf, mssm)


def _library(model):
    for library in _LIBRARIES:
        if library.is_model(model):
            return library
    raise TypeError(f"model must be a transformers MambaModel / MambaForCausalLM or a mamba-ssm "
                    f"Mamba / MambaLMHeadModel, got {type(model).__name__}")


def apply_fusedscan(model, method=None):
    """Patches every Mamba mixer of ``model`` in place to run fusedscan's scan (prefill) and
    decode step, with ``method``: None (the model's own computation, on fusedscan's kernels),
    ``DeciMamba``, ``LongMamba``, ``Modulation`` or ``MambaExtend``. Patching a patched model
    replaces its method. Returns the model.

    With DeciMamba the model's outputs (hidden states, logits) hold only the kept positions;
    ``kept_positions(model)`` gives them (batch, K) as indices into the input. Decode steps after
    a decimated prefill are ordinary steps from the states it left."""
    library = _library(model)
    method = as_method(method, library.layers(model))
    remove_fusedscan(model)
    model._fusedscan_patched = library.patch(model, method)
    return model


def remove_fusedscan(model):
    """Restores the original forwards of a patched model (no-op for an unpatched one); returns
    the model."""
    modules = model.__dict__.pop("_fusedscan_patched", None)
    if modules is not None:
        for module in modules:  # the patch set these instance attributes, over the classes'
            for name in ("forward", "allocate_inference_cache", "fusedscan_parts",
                         "fusedscan_kept_positions"):
                module.__dict__.pop(name, None)
    return model


def _patched_parts(model):
    if "_fusedscan_patched" not in model.__dict__:
        raise ValueError("model is not patched: call apply_fusedscan(model, method) first")
    return _library(model).parts_of(model)


def kept_positions(model):
    """(batch, K) int64 input positions behind the last forward's outputs when a DeciMamba
    layer decimated, else None."""
    _patched_parts(model)
    return _library(model).kept_positions(model)


class DeltaRecorder:
    """Context manager that records, per layer, the Δ̂ = softplus(delta + delta_bias) (batch,
    dim, L) each patched mixer computes at prefill, moved at once to ``device`` as float32, so
    that no more than one layer's Δ̂ is on the model's device at a time. ``layers`` limits the
    layers recorded (default: all).

    After the block, ``delta_hats[layer]`` is a list of (dim, L) tensors, one per recorded
    sequence, and ``A[layer]`` the layer's A = −exp(A_log) (dim, N) float32 on ``device``: the
    inputs of ``calibrate_longmamba(recorder.delta_hats, recorder.A, theta=...)``."""

    def __init__(self, model, layers=None, device="cpu"):
        self.parts = {p.layer: p for p in _patched_parts(model)}
        self.layers = tuple(self.parts) if layers is None else tuple(layers)
        unknown = [i for i in self.layers if i not in self.parts]
        if unknown:
            raise ValueError(f"layers {unknown} are not mixers of the model; it has "
                             f"{sorted(self.parts)}")
        self.device = torch.device(device)
        self.delta_hats = {i: [] for i in self.layers}
        self.A = {}

    def _record(self, layer, delta, delta_bias):
        dt = torch.nn.functional.softplus(delta.detach().float() + delta_bias.detach()[:, None])
        self.delta_hats[layer].extend(dt.to(self.device).unbind(0))

    def __enter__(self):
        for i in self.layers:
            self.parts[i].recorder = self._record
            self.A[i] = self.parts[i].A().detach().to(self.device)
        return self

    def __exit__(self, *exc):
        for i in self.layers:
            self.parts[i].recorder = None
        return False


def record_delta_hats(model, batches, layers=None, device="cpu"):
    """Runs ``model`` without gradients or cache on each token batch of ``batches`` (an
    iterable of (batch, T) int64 tensors, e.g. calibration sequences of the training length)
    and returns the ``DeltaRecorder`` holding every recorded layer's Δ̂ per sequence, and A. An
    unpatched model is patched with method=None for the run and restored after it."""
    patched = "_fusedscan_patched" in model.__dict__
    if not patched:
        apply_fusedscan(model)
    try:
        with DeltaRecorder(model, layers, device) as recorder, torch.no_grad():
            for tokens in batches:
                _library(model).run(model, tokens)
    finally:
        if not patched:
            remove_fusedscan(model)
    return recorder


__all__ = ["DeciMamba", "DeltaRecorder", "LongMamba", "MambaExtend", "Modulation",
           "apply_fusedscan", "kept_positions", "record_delta_hats", "remove_fusedscan"]
