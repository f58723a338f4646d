"""A Mamba language model written out plainly around its own modules, with the reference scan,
DeciMamba's reference selection and the residual gathering done row by row.

``blocks`` is a list of (norm, mixer) pairs in layer order, where a mixer has in_proj, conv1d,
x_proj, dt_proj, A_log, D and out_proj (Hugging Face's MambaMixer and mamba-ssm's Mamba both
do). The residual stream is h ← h + mixer(norm(h)) after the embedding."""

import torch
import torch.nn.functional as F

from .selective_scan import selective_scan_ref


def mixer_ref(mixer, hidden, dt_rank, N, options, select):
    """One mixer over hidden (batch, L, H). options: selective_scan_ref keyword arguments
    (delta_scale, a_scale, delta_threshold) plus "A" to replace A = −exp(A_log); select(delta,
    delta_bias) → keep_idx or None. Returns (batch, L', H) and keep_idx."""
    L = hidden.shape[1]
    x, z = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    x = F.silu(mixer.conv1d(x)[..., :L])
    dt, B, C = torch.split(mixer.x_proj(x.transpose(1, 2)), [dt_rank, N, N], dim=-1)
    delta = mixer.dt_proj.weight @ dt.transpose(1, 2)
    delta_bias = mixer.dt_proj.bias
    options = dict(options)
    A = options.pop("A", -torch.exp(mixer.A_log))
    keep_idx = select(delta, delta_bias)
    y = selective_scan_ref(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), mixer.D, z,
                           delta_bias, True, keep_idx=keep_idx, **options)
    return mixer.out_proj(y.transpose(1, 2)), keep_idx


def gather_rows_ref(t, keep_idx):
    """t[b, keep_idx[b]] for each row b."""
    return torch.stack([t[b, keep_idx[b]] for b in range(t.shape[0])])


def mamba_forward_ref(embeddings, blocks, norm_f, input_ids, dt_rank, N, options, select):
    """The final normed hidden states (batch, L', H), the language-model head's input, and the
    kept input positions (batch, L') (all of them when no layer decimates). options(layer) and
    select(layer, delta, delta_bias) as in mixer_ref."""
    h = embeddings(input_ids)
    positions = torch.arange(h.shape[1], device=h.device).expand(h.shape[0], -1)
    for layer, (norm, mixer) in enumerate(blocks):
        out, keep_idx = mixer_ref(mixer, norm(h), dt_rank, N, options(layer),
                                  lambda delta, bias: select(layer, delta, bias))
        if keep_idx is not None:
            h = gather_rows_ref(h, keep_idx)
            positions = gather_rows_ref(positions, keep_idx)
        h = h + out
    return norm_f(h), positions
