"""The scan's options, in one place: what selective_scan_ext takes besides u, delta, A, B and C,
and the layout of B and C that its checks find. Launchers, custom ops and autograd pass them as
these two tuples; the custom ops' flat signatures convert with `op_args` / `from_op_args`."""

from typing import NamedTuple, Optional, Union

from torch import Tensor

from fusedscan.utils.launch import join_scale, split_scale


class ScanOptions(NamedTuple):
    D: Optional[Tensor] = None
    z: Optional[Tensor] = None
    delta_bias: Optional[Tensor] = None
    delta_softplus: bool = False
    initial_state: Optional[Tensor] = None
    delta_scale: Union[Tensor, float, None] = None
    a_scale: Union[Tensor, float, None] = None
    delta_threshold: Optional[Tensor] = None
    keep_idx: Optional[Tensor] = None

    @property
    def visited(self):
        """Visited positions of u (batch, dim, L): K with keep_idx, else None (all L)."""
        return None if self.keep_idx is None else self.keep_idx.shape[1]


class BCLayout(NamedTuple):
    """B and C: variable (per position) or fixed (dim, N), and their groups of channels."""
    B_variable: bool = True
    C_variable: bool = True
    B_groups: int = 1
    C_groups: int = 1


# Inputs that have gradients, in the order of the backward launcher's results.
GRAD_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state",
               "delta_scale", "a_scale")


def op_args(opts, layout):
    """The custom ops' arguments after (u, delta, A, B, C): scales split into a tensor and a
    float slot (an op argument has one type)."""
    return (opts.D, opts.z, opts.delta_bias, opts.delta_softplus, opts.initial_state,
            *split_scale(opts.delta_scale), *split_scale(opts.a_scale), opts.delta_threshold,
            opts.keep_idx, *layout)


def from_op_args(args):
    """(ScanOptions, BCLayout) from op_args' tuple."""
    (D, z, delta_bias, delta_softplus, initial_state, delta_scale_t, delta_scale_f, a_scale_t,
     a_scale_f, delta_threshold, keep_idx, *layout) = args
    return (ScanOptions(D, z, delta_bias, delta_softplus, initial_state,
                        join_scale(delta_scale_t, delta_scale_f), join_scale(a_scale_t, a_scale_f),
                        delta_threshold, keep_idx), BCLayout(*layout))
