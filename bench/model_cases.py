"""Whole-model prefill in the mamba-130m shape (24 layers, d_model 768, N 16, random weights):
mamba-ssm's own MambaLMHeadModel (use_fast_path=False: the conv through PyTorch, its CUDA
scan), the same model after apply_fusedscan (no method, DeciMamba), and Hugging Face's
MambaForCausalLM after apply_fusedscan.

    python bench/model_cases.py [--lengths 2048 8192] [--profile] [--csv FILE]

prints the backbone's forward time (synchronize, forward, synchronize; median) for each model
and length; with --profile, also torch.profiler's table of the patched model's operators.
Needs mamba-ssm built (bench/mamba_ssm_cuda.py) for its models.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mamba_ssm_cuda  # noqa: E402
from fusedscan import DeciMamba, DecimationSchedule, apply_fusedscan  # noqa: E402
from timing import isolated_ms, write_csv  # noqa: E402

LENGTHS = [2048, 8192, 32768, 131072]
SHAPE = dict(d_model=768, n_layer=24, d_state=16, vocab=50280)
# DeciMamba's defaults for mamba-130m: layer 12 decimates to L_base 2000.
DECIMAMBA = DeciMamba(DecimationSchedule(layers=(12,), L_base=2000))


def mamba_ssm_model(dtype=torch.bfloat16, device="cuda"):
    mamba_ssm_cuda.load_package()
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    config = MambaConfig(d_model=SHAPE["d_model"], n_layer=SHAPE["n_layer"],
                         vocab_size=SHAPE["vocab"],
                         ssm_cfg={"layer": "Mamba1", "d_state": SHAPE["d_state"],
                                  "use_fast_path": False},
                         rms_norm=True, fused_add_norm=True, residual_in_fp32=True)
    torch.manual_seed(0)
    return MambaLMHeadModel(config, device=device, dtype=dtype).eval()


def hf_model(dtype=torch.bfloat16, device="cuda"):
    from transformers import MambaConfig, MambaForCausalLM
    config = MambaConfig(vocab_size=SHAPE["vocab"], hidden_size=SHAPE["d_model"],
                         state_size=SHAPE["d_state"], num_hidden_layers=SHAPE["n_layer"],
                         expand=2, conv_kernel=4, use_mambapy=False)
    torch.manual_seed(0)
    return MambaForCausalLM(config).to(device=device, dtype=dtype).eval()


def backbone_forward(model, tokens):
    with torch.no_grad():
        if hasattr(model.backbone, "embeddings"):  # Hugging Face
            return model.backbone(tokens, use_cache=False).last_hidden_state
        return model.backbone(tokens)


def models(which):
    """(impl name, model) pairs; which ⊂ {"mamba-ssm", "fusedscan", "fusedscan+decimamba",
    "hf+fusedscan"}."""
    for name in which:
        if name == "hf+fusedscan":
            model = hf_model()
            apply_fusedscan(model)
        else:
            model = mamba_ssm_model()
            if name != "mamba-ssm":
                apply_fusedscan(model, DECIMAMBA if name.endswith("decimamba") else None)
        yield name, model


def tokens(length, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randint(1, SHAPE["vocab"], (1, length), device="cuda", generator=g)


def profile(model, length):
    from torch.profiler import ProfilerActivity, profile as torch_profile
    x = tokens(length)
    backbone_forward(model, x)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        backbone_forward(model, x)
        torch.cuda.synchronize()
    table = prof.key_averages()
    return (table.table(sort_by="self_cuda_time_total", row_limit=18) + "\n"
            + table.table(sort_by="self_cpu_time_total", row_limit=18))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    parser.add_argument("--impls", nargs="+",
                        default=["mamba-ssm", "fusedscan", "fusedscan+decimamba", "hf+fusedscan"])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--csv")
    args = parser.parse_args()
    rows = []
    for name, model in models(args.impls):
        for length in args.lengths:
            x = tokens(length)
            backbone_forward(model, x)
            ms = isolated_ms(lambda: backbone_forward(model, x), 20 if length <= 8192 else 5)
            rows.append(dict(impl=name, length=length, ms=round(ms, 3)))
            print(rows[-1], flush=True)
            if args.profile and name in ("fusedscan", "mamba-ssm"):
                print(profile(model, length), flush=True)
        del model
        torch.cuda.empty_cache()
    if args.csv:
        write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
