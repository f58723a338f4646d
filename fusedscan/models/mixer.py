"""The Mamba (S6) mixer computed with fusedscan's kernels, shared by every patched library.

Hugging Face's MambaMixer and mamba-ssm's Mamba hold the same parameters under the same names:
in_proj (H → 2·dim), conv1d (depthwise, kernel K, padding K − 1), x_proj (dim → R + 2N),
dt_proj (R → dim, with bias), A_log (dim, N), D (dim,), out_proj (dim → H). ``MixerParts``
names them with the few scalars whose attribute names differ."""

import dataclasses

import torch
import torch.nn.functional as F

from fusedscan.selective_scan import selective_scan_ext
from fusedscan.selective_state_update import selective_state_update_ext


@dataclasses.dataclass(eq=False)
class MixerParts:
    mixer: torch.nn.Module
    layer: int
    dt_rank: int
    state_size: int
    act: object
    recorder: object = None  # DeltaRecorder's callback while one is active
    keep_idx: object = None  # mamba-ssm: the last prefill's keep_idx, read by its MixerModel

    def A(self, dtype=torch.float32):
        return -torch.exp(self.mixer.A_log.to(dtype))

    def params(self, x):
        """A, D and delta_bias in the scan's parameter dtype: float64 for a float64 model,
        else float32."""
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return self.A(dtype), self.mixer.D.to(dtype), self.mixer.dt_proj.bias.to(dtype)


def channels_first(weight, x, bias=None):
    """weight (M, K) applied along K of x (batch, K, L): (batch, M, L) with unit stride along L,
    as mamba-ssm lays it out. One (M, K) × (K, batch·L) product writes that layout directly;
    torch.matmul on (batch, K, L) would fold into a product over (batch·L, K) and return a
    transposed view, whose rows the conv copies twice and the scan reads without vector loads."""
    batch, K, L = x.shape
    y = (weight @ x.transpose(0, 1).reshape(K, batch * L)).view(-1, batch, L).transpose(0, 1)
    return y if bias is None else y + bias[:, None]


def in_projection(p, hidden):
    """(batch, L, H) → x, z (batch, dim, L)."""
    proj = p.mixer.in_proj
    return channels_first(proj.weight, hidden.transpose(1, 2), proj.bias).chunk(2, dim=1)


def causal_conv(p, x, L):
    """Depthwise causal conv and activation of x (batch, dim, P + L), whose first P positions
    are earlier inputs; returns the last L outputs (batch, dim, L)."""
    conv = p.mixer.conv1d
    return p.act(conv(x)[..., :x.shape[-1]])[..., -L:]


def _dt_b_c(p, x):
    """delta (batch, dim, L) without bias, B and C (batch, N, L), from x (batch, dim, L)."""
    x_dbl = channels_first(p.mixer.x_proj.weight, x, p.mixer.x_proj.bias)
    dt, B, C = torch.split(x_dbl, [p.dt_rank, p.state_size, p.state_size], dim=1)
    return channels_first(p.mixer.dt_proj.weight, dt), B, C


def ssm(p, method, x, z, initial_state=None, return_last_state=False):
    """The selective scan of a prefill: x, z (batch, dim, L) → y (batch, dim, L'), keep_idx
    (None, or (batch, L') for a decimating layer), last_state (or None)."""
    delta, B, C = _dt_b_c(p, x)
    A, D, delta_bias = p.params(x)
    if p.recorder is not None:
        p.recorder(p.layer, delta, delta_bias)
    keep_idx = method.select(p.layer, delta, delta_bias)
    y, last_state = selective_scan_ext(x, delta, A, B, C, D, z, delta_bias, True, True,
                                       initial_state=initial_state, keep_idx=keep_idx,
                                       **_options(method, p.layer, A, x.shape[-1]))
    return y, keep_idx, (last_state if return_last_state else None)


def step(p, method, x, z, ssm_state):
    """One decoding step: x (batch, dim) after the conv, z (batch, dim); updates ssm_state
    (batch, dim, N) float32 in place and returns y (batch, dim)."""
    delta, B, C = _dt_b_c(p, x[:, :, None])
    A, D, delta_bias = p.params(x)
    return selective_state_update_ext(ssm_state, x, delta[..., 0], A, B[..., 0], C[..., 0], D, z,
                                      delta_bias, True, **_options(method, p.layer, A, None))


def conv_step(p, conv_state, x):
    """Shifts x (batch, dim) into conv_state (batch, dim, K) in place; returns the conv's
    activated output (batch, dim)."""
    conv = p.mixer.conv1d
    window = torch.cat([conv_state[..., 1:], x[..., None].to(conv_state.dtype)], -1)
    conv_state.copy_(window)
    out = F.conv1d(window.to(conv.weight.dtype), conv.weight, conv.bias, groups=conv.groups)
    return p.act(out[..., 0]).to(x.dtype)


def out_projection(p, y, dtype):
    """y (batch, dim, L) → (batch, L, H)."""
    return p.mixer.out_proj(y.transpose(1, 2).to(dtype))


def _options(method, layer, A, L):
    return {"delta_scale": None, "a_scale": None, "delta_threshold": None,
            **method.scan_options(layer, A, L)}


def gather_positions(t, keep_idx):
    """t (batch, L, ...) at keep_idx (batch, K) → (batch, K, ...)."""
    idx = keep_idx.reshape(*keep_idx.shape, *([1] * (t.dim() - 2)))
    return t.gather(1, idx.expand(-1, -1, *t.shape[2:]))


def pad_conv_input(x, K):
    """Left-pads x (batch, dim, L) with zeros to at least K positions (the conv state)."""
    return F.pad(x, (K - x.shape[-1], 0)) if x.shape[-1] < K else x
