"""selective_scan_ext: the public function, its autograd, and the custom ops torch.compile sees."""

from operator import itemgetter
from typing import Optional

import torch
from torch import Tensor

from fusedscan.selective_scan.chunk import CHUNK_SIZE, selective_scan_fwd
from fusedscan.selective_scan.chunk_backward import selective_scan_bwd
from fusedscan.selective_scan.options import (
    GRAD_INPUTS, BCLayout, ScanOptions, from_op_args, op_args,
)
from fusedscan.selective_scan.validate import check_inputs, check_keep_idx_values
from fusedscan.utils.checks import check_decay_values
from fusedscan.utils.launch import PlanKey, SignatureCache, channel_vectors


# Stands for a tensor option in ctx.scan_options: the tensor itself is in ctx.saved_tensors.
_SAVED = object()


def _save(ctx, u, delta, A, B, C, opts, layout, chunk_states):
    """Keeps what the backward pass needs: the tensors through save_for_backward (the options'
    only where given: each saved None costs autograd time), the rest on ctx."""
    ctx.save_for_backward(u, delta, A, B, C, chunk_states,
                          *[v for v in opts if isinstance(v, Tensor)])
    ctx.scan_options = [_SAVED if isinstance(v, Tensor) else v for v in opts]
    ctx.layout = layout


def _saved(ctx):
    """(u, delta, A, B, C, opts, layout, chunk_states) as _save kept them."""
    u, delta, A, B, C, chunk_states, *tensors = ctx.saved_tensors
    tensors = iter(tensors)
    opts = ScanOptions(*[next(tensors) if v is _SAVED else v for v in ctx.scan_options])
    return u, delta, A, B, C, opts, ctx.layout, chunk_states


def _zero_dout(dout, u, opts):
    """The output gradient, zeros when autograd passes none (only last_state was used)."""
    if dout is not None:
        return dout
    return u.new_zeros((*u.shape[:2], opts.visited or u.shape[2]))


# A PlanKey per launch_signature of the output gradients (dout, dlast) where there is a dlast.
_GRAD_KEYS = SignatureCache()


def _grad_key(dout, dlast):
    """What the backward's launch plans depend on in the output gradients. Autograd hands dout
    over in out's dtype, shape and device: without dlast only its strides and alignment vary."""
    if dlast is None:
        return dout.stride(), dout.data_ptr() % 16 == 0
    return _GRAD_KEYS.for_args((dout, dlast), PlanKey)


# SelectiveScanFunction's inputs' gradients from the backward launcher's (GRAD_INPUTS), with a
# None appended for the inputs that have none.
_FUNCTION_INPUTS = ("u", "delta", "A", "B", "C", "layout", "plan_key", "return_last_state",
                    *ScanOptions._fields)
_function_grads = itemgetter(*(GRAD_INPUTS.index(k) if k in GRAD_INPUTS else len(GRAD_INPUTS)
                               for k in _FUNCTION_INPUTS))


class SelectiveScanFunction(torch.autograd.Function):
    """The scan's autograd in eager mode: the launchers called directly (a custom op's dispatch
    costs several times more host time per call)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, layout, plan_key, return_last_state, *options):
        opts = ScanOptions(*options)
        out, last_state, chunk_states = selective_scan_fwd(
            u, delta, A, B, C, opts, layout, last_state=return_last_state, plan_key=plan_key)
        _save(ctx, u, delta, A, B, C, opts, layout, chunk_states)
        ctx.plan_key = plan_key
        ctx.set_materialize_grads(False)
        # One output unless the last state is asked for: each output costs autograd time.
        return (out, last_state) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, dlast=None):
        u, delta, A, B, C, opts, layout, chunk_states = _saved(ctx)
        dout = _zero_dout(dout, u, opts)
        # The forward's key fixes everything of the backward's plan but the output gradients.
        plan_key = None if ctx.plan_key is None else (ctx.plan_key, _grad_key(dout, dlast))
        return _function_grads((*selective_scan_bwd(dout, dlast, u, delta, A, B, C, opts, layout,
                                                    chunk_states, plan_key=plan_key), None))


# The scan as two torch custom ops, so that torch.compile sees it as one opaque node (no graph
# break) and autograd connects them. Their arguments after (u, delta, A, B, C) are options.op_args.
@torch.library.custom_op("fusedscan::selective_scan_fwd", mutates_args=())
def selective_scan_fwd_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
    initial_state: Optional[Tensor], delta_scale_t: Optional[Tensor],
    delta_scale_f: Optional[float], a_scale_t: Optional[Tensor], a_scale_f: Optional[float],
    delta_threshold: Optional[Tensor], keep_idx: Optional[Tensor], B_variable: bool,
    C_variable: bool, B_groups: int, C_groups: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, last_state, chunk_states) of selective_scan_fwd."""
    opts, layout = from_op_args((D, z, delta_bias, delta_softplus, initial_state, delta_scale_t,
                                 delta_scale_f, a_scale_t, a_scale_f, delta_threshold, keep_idx,
                                 B_variable, C_variable, B_groups, C_groups))
    return selective_scan_fwd(u, delta, A, B, C, opts, layout)


@selective_scan_fwd_op.register_fake
def _(u, delta, A, B, C, *args):
    opts, _ = from_op_args(args)
    batch, dim, L = u.shape
    nvisit = opts.visited or L
    dstate = A.shape[1]
    return (u.new_empty((batch, dim, nvisit)), A.new_empty((batch, dim, dstate)),
            A.new_empty((batch, dim, (nvisit + CHUNK_SIZE - 1) // CHUNK_SIZE, dstate)))


@torch.library.custom_op("fusedscan::selective_scan_bwd", mutates_args=())
def selective_scan_bwd_op(
    dout: Tensor, dlast: Optional[Tensor], chunk_states: Tensor, u: Tensor, delta: Tensor,
    A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], delta_softplus: bool, initial_state: Optional[Tensor],
    delta_scale_t: Optional[Tensor], delta_scale_f: Optional[float], a_scale_t: Optional[Tensor],
    a_scale_f: Optional[float], delta_threshold: Optional[Tensor], keep_idx: Optional[Tensor],
    B_variable: bool, C_variable: bool, B_groups: int, C_groups: int,
) -> list[Tensor]:
    """The gradients of GRAD_INPUTS from selective_scan_bwd; an empty tensor for an absent
    input (custom ops return no None)."""
    opts, layout = from_op_args((D, z, delta_bias, delta_softplus, initial_state, delta_scale_t,
                                 delta_scale_f, a_scale_t, a_scale_f, delta_threshold, keep_idx,
                                 B_variable, C_variable, B_groups, C_groups))
    grads = selective_scan_bwd(dout, dlast, u, delta, A, B, C, opts, layout, chunk_states)
    # The per-channel gradients are rows of one buffer; outputs must not alias each other.
    return [g.clone() if g is not None and g._base is not None else
            g if g is not None else u.new_empty(0) for g in grads]


@selective_scan_bwd_op.register_fake
def _(dout, dlast, chunk_states, u, delta, A, B, C, *args):
    opts, _ = from_op_args(args)
    inputs = dict(u=u, delta=delta, A=A, B=B, C=C, **opts._asdict())
    return [torch.empty_like(inputs[k]) if torch.is_tensor(inputs[k]) else u.new_empty(0)
            for k in GRAD_INPUTS]


_OP_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus",
              "initial_state", "delta_scale_t", "delta_scale_f", "a_scale_t", "a_scale_f",
              "delta_threshold", "keep_idx", "B_variable", "C_variable", "B_groups", "C_groups")


def _op_setup_context(ctx, inputs, output):
    u, delta, A, B, C, *args = inputs
    opts, layout = from_op_args(args)
    _save(ctx, u, delta, A, B, C, opts, layout, output[2])
    ctx.mark_non_differentiable(output[2])


def _op_backward(ctx, dout, dlast, _):
    u, delta, A, B, C, opts, layout, chunk_states = _saved(ctx)
    grads = dict(zip(GRAD_INPUTS, selective_scan_bwd_op(
        _zero_dout(dout, u, opts), dlast, chunk_states, u, delta, A, B, C,
        *op_args(opts, layout))))
    grads["delta_scale_t"], grads["a_scale_t"] = grads.pop("delta_scale"), grads.pop("a_scale")
    inputs = dict(u=u, delta=delta, A=A, B=B, C=C, delta_scale_t=opts.delta_scale,
                  a_scale_t=opts.a_scale, **opts._asdict())
    return tuple(grads[k] if k in grads and torch.is_tensor(inputs[k]) else None
                 for k in _OP_INPUTS)


selective_scan_fwd_op.register_autograd(_op_backward, setup_context=_op_setup_context)


def scan(u, delta, A, B, C, opts, layout, return_last_state=False, plan_key=None):
    """The launch on checked inputs, by the cheapest path that gives autograd what it needs:
    the custom op while torch.compile traces, the autograd.Function when a gradient is wanted,
    else the launcher alone. plan_key: the PlanKey that check_inputs returned for the public
    call's arguments (their signature fixes everything the launch plans depend on), or None."""
    # check_inputs gives no PlanKey while torch.compile traces.
    if plan_key is None and torch.compiler.is_compiling():
        out, last_state, _ = selective_scan_fwd_op(u, delta, A, B, C, *op_args(opts, layout))
        return (out, last_state) if return_last_state else out
    if torch.is_grad_enabled() and (
            u.requires_grad or delta.requires_grad or A.requires_grad or B.requires_grad
            or C.requires_grad or any(isinstance(x, Tensor) and x.requires_grad for x in opts)):
        return SelectiveScanFunction.apply(u, delta, A, B, C, layout, plan_key,
                                           return_last_state, *opts)
    out, last_state, _ = selective_scan_fwd(u, delta, A, B, C, opts, layout,
                                            last_state=return_last_state, plan_key=plan_key)
    return (out, last_state) if return_last_state else out


def selective_scan_ext(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, *, initial_state=None, delta_scale=None,
                       a_scale=None, delta_threshold=None, keep_idx=None, check_values=False):
    """Mamba's selective scan (S6) with the length-extension controls fused in.

    The positional arguments are those of mamba-ssm's ``selective_scan_fn``; with no keyword
    argument set the result is the same.

    Shapes (batch, dim, L; N states; G groups; K kept positions):
        u, delta, z:    (batch, dim, L), float32, float16 or bfloat16.
        A:              (dim, N) float32, real; 1 <= N <= 256.
        B, C:           fixed (dim, N) float32, variable (batch, N, L), or grouped
                        (batch, G, N, L) with dim % G == 0 (channel d uses group
                        d // (dim // G)); variable ones float32, float16 or bfloat16.
        D, delta_bias:  (dim,) float32.
        initial_state:  (batch, dim, N) float32.
        delta_scale:    float (finite, >= 0) or (dim,) float32.
        a_scale:        float (finite, >= 0), (dim,) or (dim, N) float32.
        delta_threshold: (dim,) float32.
        keep_idx:       (batch, K) int64, strictly increasing, values in [0, L).

    Semantics (all arithmetic in float32):
        Δ̂ = delta + delta_bias, then softplus if delta_softplus, then × delta_scale, then
        Δ̂ := 0 wherever Δ̂ <= delta_threshold[d] (the state passes such a token unchanged, but
        it still has an output). A_eff = A · a_scale. Over the visited positions t (keep_idx[b]
        if given, else 0..L-1), in order:
            h ← exp(Δ̂_t · A_eff) ⊙ h + (Δ̂_t · u_t) · B_t
            y_t = Σ_n C_t[n] · h[n] + D · u_t,   out_t = y_t · silu(z_t) if z is given,
        with h starting at initial_state or zero.

    Returns out (batch, dim, L), or (batch, dim, K) with keep_idx (out[:, :, j] belongs to
    position keep_idx[:, j]), in u's dtype; with return_last_state=True, (out, last_state) where
    last_state (batch, dim, N) float32 is h after the last visited position.

    Raises TypeError / ValueError (NotImplementedError for complex A, B or C) naming the argument
    before any kernel runs. Tensors must be on one CUDA device, or on the CPU when TRITON_INTERPRET=1
    was set before fusedscan was imported. The values of tensors are checked on the device, so
    that the call never waits for the GPU: from a keep_idx entry that is out of [0, L) or not
    above the one before it, that row's out and last_state are NaN; a channel whose A_eff has a
    positive entry (A > 0 or a negative a_scale) or whose delta_scale is negative (a state that
    would grow without bound) has NaN out and last_state, and NaN gradients. check_values=True
    checks keep_idx, A <= 0 and tensor scales >= 0 on the host instead, raising ValueError (at
    the cost of a synchronization).

    Differentiable in every floating input (u, delta, A, B, C, D, z, delta_bias, initial_state,
    and delta_scale, a_scale when tensors) through both out and last_state; delta_threshold and
    keep_idx get no gradient. Where Δ̂ <= delta_threshold the gradient to delta is 0; with
    keep_idx the gradients of u, delta, z and variable B, C are zero at positions not kept.
    Gradients come back in each input's dtype; the backward pass is deterministic.

    Under torch.compile the kernels run as the torch custom ops fusedscan::selective_scan_fwd /
    _bwd, traced without a graph break (check_values=True breaks the graph).
    """
    layout, plan_key, copy_vectors = check_inputs(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state,
        delta_scale, a_scale, delta_threshold, keep_idx)
    if not isinstance(check_values, bool):
        raise TypeError(f"check_values must be a bool, got {type(check_values).__name__}")
    if check_values:
        check_decay_values(A, delta_scale, a_scale)
        if keep_idx is not None:
            check_keep_idx_values(keep_idx, u.shape[2])
    if copy_vectors:
        D, delta_bias, delta_scale, delta_threshold = channel_vectors(D, delta_bias, delta_scale,
                                                                      delta_threshold)
    opts = ScanOptions(D, z, delta_bias, delta_softplus, initial_state, delta_scale, a_scale,
                       delta_threshold, keep_idx)
    return scan(u, delta, A, B, C, opts, layout, return_last_state, plan_key)


__all__ = ["BCLayout", "ScanOptions", "scan", "selective_scan_ext"]
