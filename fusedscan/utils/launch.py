"""Host-side helpers of the kernel launchers: scales as kernel arguments, strides of optional
tensors."""

import torch

from fusedscan.utils.kernels import LOG2E


def kernel_scales(delta_scale, a_scale, dim, dstate):
    """(delta_mult, delta_scale tensor or None, a_mult, a_scale (dim, N) tensor or None): float
    scales fold into the kernels' multipliers; a_mult carries log2(e) for exp2."""
    delta_mult, a_mult = 1.0, LOG2E
    if delta_scale is not None and not torch.is_tensor(delta_scale):
        delta_mult, delta_scale = float(delta_scale), None
    if a_scale is not None and not torch.is_tensor(a_scale):
        a_mult, a_scale = LOG2E * float(a_scale), None
    if a_scale is not None and a_scale.dim() == 1:
        a_scale = a_scale[:, None].expand(dim, dstate)
    return delta_mult, delta_scale, a_mult, a_scale


def strides(x, n):
    """x's strides, or n zeros for an absent tensor."""
    return x.stride() if x is not None else (0,) * n


def channel_vectors(*xs):
    """The (dim,) parameters contiguous: the kernels read them at unit stride."""
    return tuple(x.contiguous() if torch.is_tensor(x) else x for x in xs)


def split_scale(scale):
    """A scale as the custom ops take it: (tensor or None, float or None)."""
    return (scale, None) if torch.is_tensor(scale) else (None, scale)


def join_scale(tensor, number):
    """The inverse of split_scale."""
    return tensor if tensor is not None else number
