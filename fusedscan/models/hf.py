"""Hugging Face transformers (>= 5.17) MambaModel / MambaForCausalLM on fusedscan's kernels.

Three forwards are replaced on the instances: each MambaMixer's (prefill through
selective_scan_ext, decode steps through selective_state_update_ext, the method's options at
both), each MambaBlock's (the residual follows a decimating mixer's kept positions), and the
MambaModel's (the attention mask follows them, and the kept positions are kept in
``model.fusedscan_kept_positions``)."""

import sys
import types

import torch

from fusedscan.models import mixer as M


def is_model(model):
    return _backbone(model) is not None


def kept_positions(model):
    return _backbone(model).fusedscan_kept_positions


def run(model, tokens):
    return model(tokens, use_cache=False)


def _modeling():
    """transformers' modeling_mamba, or None: a model of it exists only once it is imported."""
    return sys.modules.get("transformers.models.mamba.modeling_mamba")


def _backbone(model):
    modeling = _modeling()
    if modeling is None:
        return None
    MambaModel = modeling.MambaModel
    if isinstance(model, MambaModel):
        return model
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, MambaModel) else None


def _parts(mixer):
    return M.MixerParts(mixer, mixer.layer_idx, mixer.time_step_rank, mixer.ssm_state_size,
                        mixer.act)


def layers(model):
    """The layer index of each mixer."""
    return [block.mixer.layer_idx for block in _backbone(model).layers]


def patch(model, method):
    version = sys.modules["transformers"].__version__
    if tuple(int(v) for v in version.split(".")[:2]) < (5, 17):
        raise ValueError(f"fusedscan patches transformers >= 5.17 Mamba models (its cache API); "
                         f"transformers {version} is installed")
    backbone = _backbone(model)
    for block in backbone.layers:
        block.mixer.fusedscan_parts = _parts(block.mixer)
        block.mixer.forward = types.MethodType(_mixer_forward(method), block.mixer)
        block.forward = types.MethodType(_block_forward, block)
    backbone.forward = types.MethodType(_model_forward(_modeling()), backbone)
    backbone.fusedscan_kept_positions = None
    return [backbone, *backbone.layers, *(b.mixer for b in backbone.layers)]


def parts_of(model):
    return [block.mixer.fusedscan_parts for block in _backbone(model).layers]


def _mixer_forward(method):
    def forward(self, hidden_states, cache=None, attention_mask=None, return_keep_idx=False,
                cache_params=None, **kwargs):
        cache_params = cache if cache is not None else cache_params
        p = self.fusedscan_parts
        layer, L, dtype = p.layer, hidden_states.shape[1], hidden_states.dtype
        if attention_mask is not None:
            hidden_states = (hidden_states * attention_mask[:, :, None]).to(dtype)
        x, z = M.in_projection(p, hidden_states)
        prefilled = cache_params is not None and cache_params.has_previous_state(layer)
        keep_idx = None
        if prefilled and L == 1 and not cache_params.layers[layer].record_past:
            cache = cache_params.layers[layer]
            xc = M.conv_step(p, cache.conv_states[0], x[..., 0])
            y = M.step(p, method, xc, z[..., 0], cache.recurrent_states[0])[..., None]
        else:
            initial_state = cache_params.layers[layer].recurrent_states[0] if prefilled else None
            full = x
            if cache_params is not None:
                full = cache_params.update_conv_state(x, layer,
                                                      conv_kernel_size=self.conv_kernel_size)
            xc = M.causal_conv(p, full, L)
            if attention_mask is not None:
                xc = (xc * attention_mask[:, None, :]).to(dtype)
            y, keep_idx, last_state = M.ssm(p, method, xc, z, initial_state,
                                            return_last_state=cache_params is not None)
            if cache_params is not None:
                cache_params.update_recurrent_state(last_state, layer)
        out = M.out_projection(p, y, dtype)
        return (out, keep_idx) if return_keep_idx else out
    return forward


def _block_forward(self, hidden_states, cache=None, attention_mask=None, cache_params=None,
                   **kwargs):
    cache_params = cache if cache is not None else cache_params
    residual = hidden_states
    hidden_states = self.norm(hidden_states.to(dtype=self.norm.weight.dtype))
    if self.residual_in_fp32:
        residual = residual.to(torch.float32)
    hidden_states, keep_idx = self.mixer(hidden_states, cache=cache_params,
                                         attention_mask=attention_mask, return_keep_idx=True)
    if keep_idx is not None:
        residual = M.gather_positions(residual, keep_idx)
    return residual + hidden_states, keep_idx


def _model_forward(modeling):
    def forward(self, input_ids=None, inputs_embeds=None, cache=None, use_cache=None,
                output_hidden_states=None, return_dict=None, attention_mask=None,
                cache_params=None, **kwargs):
        # transformers 5.24 renamed cache_params to cache (arguments and output field).
        cache_params = cache if cache is not None else cache_params
        config = self.config
        if output_hidden_states is None:
            output_hidden_states = config.output_hidden_states
        if use_cache is None:
            use_cache = config.use_cache if not self.training else False
        if return_dict is None:
            return_dict = config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embeddings(input_ids)
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache_params is None:
            cache_params = modeling.DynamicCache(config=config)

        hidden_states, positions = inputs_embeds, None
        all_hidden_states = () if output_hidden_states else None
        for block in self.layers:
            hidden_states, keep_idx = block(hidden_states, cache=cache_params,
                                            attention_mask=attention_mask)
            if keep_idx is not None:
                positions = keep_idx if positions is None else positions.gather(1, keep_idx)
                if attention_mask is not None:
                    attention_mask = attention_mask.gather(1, keep_idx)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
        self.fusedscan_kept_positions = positions
        hidden_states = self.norm_f(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        if not return_dict:
            return tuple(v for v in (hidden_states, cache_params, all_hidden_states)
                         if v is not None)
        cache_field = "cache" if "cache" in modeling.MambaOutput.__dataclass_fields__ else \
            "cache_params"
        return modeling.MambaOutput(last_hidden_state=hidden_states,
                                    hidden_states=all_hidden_states,
                                    **{cache_field: cache_params if use_cache else None})
    return forward
