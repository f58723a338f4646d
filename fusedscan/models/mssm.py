"""mamba-ssm's Mamba (v1) mixers, and MambaLMHeadModel / MixerModel, on fusedscan's kernels.

Each Mamba module's forward is replaced: prefill through selective_scan_ext, decode steps
(inference_params.seqlen_offset > 0) through selective_state_update_ext, with the method's
options at both; the ssm state of the inference cache is float32. For DeciMamba the
MixerModel's forward is replaced too: the residual stream follows a decimating mixer's kept
positions, which are kept in ``backbone.fusedscan_kept_positions``."""

import sys
import types

import torch

from fusedscan.models import mixer as M
from fusedscan.models.methods import DeciMamba


def _classes():
    if "mamba_ssm" not in sys.modules:  # a model of this library exists only once it is imported
        return None
    from mamba_ssm.models.mixer_seq_simple import MixerModel
    from mamba_ssm.modules.mamba_simple import Mamba
    return Mamba, MixerModel


def _backbone(model):
    MixerModel = _classes()[1]
    if isinstance(model, MixerModel):
        return model
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, MixerModel) else None


def _mixers(model):
    Mamba = _classes()[0]
    return [m for m in model.modules() if isinstance(m, Mamba)]


def is_model(model):
    return _classes() is not None and isinstance(model, torch.nn.Module) and bool(_mixers(model))


def layers(model):
    """The layer index of each mixer (its position among the model's mixers when it has none)."""
    return [m.layer_idx if m.layer_idx is not None else i for i, m in enumerate(_mixers(model))]


def patch(model, method):
    mixers, backbone = _mixers(model), _backbone(model)
    if isinstance(method, DeciMamba):
        if backbone is None:
            raise ValueError("DeciMamba needs a MambaLMHeadModel or MixerModel, whose residual "
                             "stream fusedscan can gather; got a module holding Mamba mixers")
        if any(block.mlp is not None or not isinstance(block.mixer, _classes()[0])
               for block in backbone.layers):
            raise ValueError("DeciMamba needs every block of the model to be a Mamba mixer "
                             "without an MLP")
    for layer, mixer in zip(layers(model), mixers):
        mixer.fusedscan_parts = M.MixerParts(mixer, layer, mixer.dt_rank, mixer.d_state,
                                             mixer.act)
        mixer.forward = types.MethodType(_mixer_forward(method), mixer)
        mixer.allocate_inference_cache = types.MethodType(_allocate_inference_cache, mixer)
    patched = list(mixers)
    if backbone is not None:
        backbone.forward = types.MethodType(_model_forward, backbone)
        backbone.fusedscan_kept_positions = None
        patched.append(backbone)
    return patched


def parts_of(model):
    return [m.fusedscan_parts for m in _mixers(model)]


def kept_positions(model):
    backbone = _backbone(model)
    return None if backbone is None else backbone.fusedscan_kept_positions


def run(model, tokens):
    return model(tokens)


def _allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
    """The inference cache with the ssm state in float32 (fusedscan's decode step keeps its
    state in float32; float64 for a float64 model)."""
    weight = self.conv1d.weight
    conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=weight.device,
                             dtype=weight.dtype if dtype is None else dtype)
    ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=weight.device,
                            dtype=torch.float64 if weight.dtype == torch.float64 else torch.float32)
    return conv_state, ssm_state


def _mixer_forward(method):
    def forward(self, hidden_states, inference_params=None, **kwargs):
        p = self.fusedscan_parts
        batch, L, _ = hidden_states.shape
        x, z = M.in_projection(p, hidden_states)
        states = None
        if inference_params is not None:
            cache = inference_params.key_value_memory_dict
            if p.layer not in cache:
                cache[p.layer] = self.allocate_inference_cache(batch, None)
            states = cache[p.layer]
            if inference_params.seqlen_offset > 0:
                xc = M.conv_step(p, states[0], x[..., 0])
                y = M.step(p, method, xc, z[..., 0], states[1])[..., None]
                p.keep_idx = None
                return M.out_projection(p, y, hidden_states.dtype)
            states[0].copy_(M.pad_conv_input(x, self.d_conv)[..., -self.d_conv:])
        xc = M.causal_conv(p, x, L)
        y, p.keep_idx, last_state = M.ssm(p, method, xc, z, None, states is not None)
        if states is not None:
            states[1].copy_(last_state)
        return M.out_projection(p, y, hidden_states.dtype)
    return forward


def _model_forward(self, input_ids, inference_params=None, **mixer_kwargs):
    hidden_states, residual, positions = self.embedding(input_ids), None, None
    for block in self.layers:
        hidden_states, residual = block(hidden_states, residual, inference_params=inference_params,
                                        **mixer_kwargs)
        parts = getattr(block.mixer, "fusedscan_parts", None)
        keep_idx = None if parts is None else parts.keep_idx
        if keep_idx is not None:
            residual = M.gather_positions(residual, keep_idx)
            positions = keep_idx if positions is None else positions.gather(1, keep_idx)
    self.fusedscan_kept_positions = positions
    if not self.fused_add_norm:
        residual = hidden_states + residual
        return self.norm_f(residual.to(dtype=self.norm_f.weight.dtype))
    return _layer_norm_fn(hidden_states, self.norm_f.weight, self.norm_f.bias, eps=self.norm_f.eps,
                          residual=residual, prenorm=False,
                          residual_in_fp32=self.residual_in_fp32,
                          is_rms_norm=type(self.norm_f).__name__ == "RMSNorm")


def _layer_norm_fn(*args, **kwargs):
    """mamba-ssm's fused add-and-norm (imported on use: mamba-ssm is optional)."""
    from mamba_ssm.ops.triton.layer_norm import layer_norm_fn
    return layer_norm_fn(*args, **kwargs)
