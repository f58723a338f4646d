"""Length-extension methods as objects that a patched model consults layer by layer.

A method answers two questions for a mixer at layer ``layer``:
    scan_options(layer, A, L): the keyword arguments of ``selective_scan_ext`` / the decode
        step (delta_scale, a_scale, delta_threshold) for a prefill of L positions, or for decode
        steps when L is None;
    select(layer, delta, delta_bias): DeciMamba's keep_idx (batch, K), or None.
"""

import math
from collections.abc import Mapping

import torch

from fusedscan.methods import DecimationSchedule, LongMambaCalibration, spectrum_a_scale
from fusedscan.methods.modulation import FORMS


class Method:
    """No extension: the model's own scan."""

    def scan_options(self, layer, A, L):
        return {}

    def select(self, layer, delta, delta_bias):
        return None

    def named_layers(self):
        """(what names them, the layers this method names one by one): checked against the
        model's layers when it is applied."""
        return "", ()


class DeciMamba(Method):
    """DeciMamba: at each layer of ``schedule.layers`` the mixer keeps the schedule's top-k
    positions by ‖Δ̂_t‖₂ (plus the last ``keep_last``), and every later layer sees only those.
    Decode steps are not decimated."""

    def __init__(self, schedule):
        if not isinstance(schedule, DecimationSchedule):
            raise TypeError(f"schedule must be a DecimationSchedule, got {type(schedule).__name__}")
        self.schedule = schedule

    def select(self, layer, delta, delta_bias):
        return self.schedule.select(layer, delta, delta_bias)

    def named_layers(self):
        return "schedule.layers", self.schedule.layers

    def __repr__(self):
        return f"DeciMamba({self.schedule!r})"


class LongMamba(Method):
    """LongMamba: in each calibrated layer, Δ̂ of a global channel is set to 0 where it is at or
    below ``calibration.delta_threshold(S, layer)``. S is ``length`` when given; otherwise the
    prefill's length, and decode steps keep the threshold of the layer's last prefill (a
    decoding step does not change S). Layers the calibration does not name are unchanged."""

    def __init__(self, calibration, length=None):
        if not isinstance(calibration, LongMambaCalibration):
            raise TypeError(f"calibration must be a LongMambaCalibration, got "
                            f"{type(calibration).__name__}")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                                   or length < 1):
            raise ValueError(f"length must be None or a positive int, got {length!r}")
        self.calibration = calibration
        self.length = length
        self._prefill_length = {}

    def scan_options(self, layer, A, L):
        if layer not in self.calibration.log_decays:
            return {}
        if self.length is not None:
            S = self.length
        elif L is not None:
            S = self._prefill_length[layer] = L
        elif layer in self._prefill_length:
            S = self._prefill_length[layer]
        else:
            raise ValueError(f"LongMamba without a fixed length: layer {layer} decodes before any "
                             f"prefill set its length")
        threshold = self.calibration.delta_threshold(S, layer, A.device)
        return {"delta_threshold": threshold.to(A.dtype)}

    def named_layers(self):
        return "calibration.layers", self.calibration.layers

    def __repr__(self):
        return f"LongMamba(layers={self.calibration.layers}, length={self.length})"


class _PerLayer:
    """Scales given for every layer at once (a float or 0-d tensor), as a mapping layer -> s,
    or as a sequence / tensor indexed by layer; ``of(layer)`` is None for a layer not named."""

    def __init__(self, scales):
        if isinstance(scales, bool):
            raise TypeError("scales must be a float, a tensor, a sequence or a mapping, got bool")
        self.every = None
        self.table = {}
        if isinstance(scales, (int, float)) or (torch.is_tensor(scales) and scales.dim() == 0):
            self.every = scales
            items = {"every layer": scales}
        elif isinstance(scales, Mapping):
            items = self.table = dict(scales)
        elif isinstance(scales, (list, tuple)) or torch.is_tensor(scales):
            items = self.table = dict(enumerate(scales))
        else:
            raise TypeError(f"scales must be a float, a tensor, a sequence or a mapping, got "
                            f"{type(scales).__name__}")
        for layer, s in items.items():
            if isinstance(s, bool) or not (isinstance(s, (int, float)) or torch.is_tensor(s)):
                raise TypeError(f"scales[{layer!r}] must be a float or a tensor, got "
                                f"{type(s).__name__}")
            if isinstance(s, (int, float)) and not (math.isfinite(s) and s > 0):
                raise ValueError(f"scales[{layer!r}] must be finite and positive, got {s!r}")

    def of(self, layer):
        return self.every if self.every is not None else self.table.get(layer)


class _Scaled(Method):
    """A method with scales per layer (_PerLayer)."""

    def named_layers(self):
        return "scales", tuple(self.scales.table)


class Modulation(_Scaled):
    """Mamba Modulation: layer ℓ's A becomes −|A|^s (form "power") or s·A (form "linear"), with
    s = scales[ℓ]. ``scales`` is a float or 0-d tensor for every layer, a mapping layer -> s,
    or a sequence / tensor indexed by layer (s[ℓ] a float, 0-d, (dim,) or (dim, N) tensor); a
    tensor that requires grad carries gradients (``calibrate_scales_gradient``)."""

    def __init__(self, scales, form="power"):
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.scales = _PerLayer(scales)
        self.form = form

    def scan_options(self, layer, A, L):
        s = self.scales.of(layer)
        return {} if s is None else {"a_scale": spectrum_a_scale(A, s, self.form)}


class MambaExtend(_Scaled):
    """MambaExtend: layer ℓ's Δ̂ is multiplied by scales[ℓ] (a float, or a 0-d / (dim,) tensor);
    ``scales`` is given as for ``Modulation``."""

    def __init__(self, scales):
        self.scales = _PerLayer(scales)

    def scan_options(self, layer, A, L):
        s = self.scales.of(layer)
        if s is None:
            return {}
        if torch.is_tensor(s):
            s = s.to(device=A.device, dtype=A.dtype).expand(A.shape[0])
        return {"delta_scale": s}


def as_method(method, layers):
    """method (None for no extension) checked for a model whose mixers are at `layers`: a
    method that names a layer the model does not have (a DeciMamba layer past the last one,
    more per-layer scales than layers) would silently do nothing there."""
    if method is None:
        return Method()
    if not isinstance(method, Method):
        raise TypeError(f"method must be None, DeciMamba, LongMamba, Modulation or MambaExtend, "
                        f"got {type(method).__name__}")
    what, named = method.named_layers()
    layers = set(layers)
    missing = [layer for layer in named if layer not in layers]
    if missing:
        raise ValueError(f"method: {type(method).__name__}'s {what} name layers {missing} that "
                         f"the model does not have; its mixers are at layers "
                         f"{sorted(layers)}")
    return method
