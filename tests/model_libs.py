"""Tiny, randomly initialised Mamba language models of each supported library, built from the
library's own config classes, behind one small interface for tests/test_models.py."""

import importlib

import torch
import torch.nn.functional as F

from tests.conftest import DEVICE

VOCAB, HIDDEN, N, LAYERS, DT_RANK = 61, 16, 5, 4, 3


def _spread_decay_rates(mixers):
    """Random dt biases, so that the methods change the output measurably."""
    with torch.no_grad():
        for mixer in mixers:
            mixer.dt_proj.bias.add_(torch.randn_like(mixer.dt_proj.bias))


def _cache(output):
    """The cache of a transformers Mamba output: `cache` from 5.24 on, `cache_params` before."""
    return output.cache if "cache" in output.__dataclass_fields__ else output.cache_params


def _cache_arg():
    """The forwards' name for the cache argument in the installed transformers."""
    import inspect

    modeling = importlib.import_module("transformers.models.mamba.modeling_mamba")
    params = inspect.signature(modeling.MambaModel.forward).parameters
    return "cache" if "cache" in params else "cache_params"


class Transformers:
    name = "transformers"
    module = "transformers"

    def build(self, dtype=torch.float32, plain=False):
        """plain: the residual stream kept in the model's dtype (for float64 comparisons)."""
        tf = importlib.import_module("transformers")
        config = tf.MambaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, state_size=N, num_hidden_layers=LAYERS,
            expand=2, conv_kernel=4, time_step_rank=DT_RANK, residual_in_fp32=not plain,
            pad_token_id=0, eos_token_id=None, bos_token_id=None)
        model = tf.MambaForCausalLM(config).to(device=DEVICE, dtype=dtype).eval()
        _spread_decay_rates(b.mixer for b in model.backbone.layers)
        return model

    def parts(self, model):
        """(embeddings, [(norm, mixer) per layer], final norm)."""
        bb = model.backbone
        return bb.embeddings, [(b.norm, b.mixer) for b in bb.layers], bb.norm_f

    def backbone(self, model):
        return model.backbone

    def hidden(self, model, x):
        return model.backbone(x, use_cache=False).last_hidden_state

    def logits(self, model, x):
        return model(x).logits

    def hidden_and_logits(self, model, x):
        """The final hidden states (the head's input) and the logits, from one forward."""
        out = model(x, output_hidden_states=True, use_cache=False)
        return out.hidden_states[-1], out.logits

    def prefill(self, model, x):
        """Runs x with a fresh cache; returns (last hidden states, the cache)."""
        out = model.backbone(x, use_cache=True)
        return out.last_hidden_state, _cache(out)

    def step(self, model, token, cache):
        return model.backbone(token, **{_cache_arg(): cache}, use_cache=True).last_hidden_state

    def step_logits(self, model, token, cache):
        return model(token, **{_cache_arg(): cache}, use_cache=True).logits

    def prefill_logits(self, model, x):
        out = model(x, use_cache=True)
        return out.logits, _cache(out)

    def generate(self, model, x, steps):
        """Greedy: (sequences (batch, L + steps), [scores (batch, vocab) per step])."""
        out = model.generate(x, max_new_tokens=steps, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, attention_mask=torch.ones_like(x))
        return out.sequences, list(out.scores)

    def loss(self, model, x):
        return model(x, labels=x).loss


class MambaSSM:
    name = "mamba_ssm"
    module = "mamba_ssm"

    def build(self, dtype=torch.float32, plain=False):
        """plain: torch LayerNorms, no fused add-norm, residual in the model's dtype (for
        float64 comparisons); else mamba-ssm's defaults (Triton RMSNorm, fused add-norm)."""
        from mamba_ssm.models.config_mamba import MambaConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
        config = MambaConfig(d_model=HIDDEN, n_layer=LAYERS, vocab_size=VOCAB,
                             ssm_cfg={"layer": "Mamba1", "d_state": N, "dt_rank": DT_RANK},
                             rms_norm=not plain, fused_add_norm=not plain,
                             residual_in_fp32=not plain, pad_vocab_size_multiple=1)
        model = MambaLMHeadModel(config, device=DEVICE, dtype=dtype).eval()
        _spread_decay_rates(b.mixer for b in model.backbone.layers)
        return model

    def parts(self, model):
        bb = model.backbone
        return bb.embedding, [(b.norm, b.mixer) for b in bb.layers], bb.norm_f

    def backbone(self, model):
        return model.backbone

    def hidden(self, model, x):
        return model.backbone(x)

    def logits(self, model, x):
        return model(x).logits

    def hidden_and_logits(self, model, x):
        return self.hidden(model, x), self.logits(model, x)

    def _params(self, x):
        from mamba_ssm.utils.generation import InferenceParams
        return InferenceParams(max_seqlen=x.shape[1] + 16, max_batch_size=x.shape[0])

    def prefill(self, model, x):
        params = self._params(x)
        h = model.backbone(x, inference_params=params)
        params.seqlen_offset += x.shape[1]
        return h, params

    def step(self, model, token, params):
        h = model.backbone(token, inference_params=params)
        params.seqlen_offset += 1
        return h

    def step_logits(self, model, token, params):
        return model.lm_head(self.step(model, token, params))

    def prefill_logits(self, model, x):
        h, params = self.prefill(model, x)
        return model.lm_head(h), params

    def generate(self, model, x, steps):
        out = model.generate(x, max_length=x.shape[1] + steps, top_k=1, cg=False,
                             output_scores=True, return_dict_in_generate=True)
        return out.sequences, list(out.scores)

    def loss(self, model, x):
        logits = model(x).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())


LIBS = {"transformers": Transformers(), "mamba_ssm": MambaSSM()}
