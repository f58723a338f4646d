"""selective_state_update_ext: argument checks and launch of the decode-step kernel."""

from typing import Optional

import torch
from torch import Tensor

from fusedscan.selective_state_update.step import selective_state_update
from fusedscan.utils.checks import (
    ACTIVATION_DTYPES, F64, check_decay_values, check_dtype, check_param, check_scale, check_shape,
    check_tensor, param_dtypes, state_size_note,
)
from fusedscan.utils.device import check_devices
from fusedscan.utils.launch import channel_vectors, join_scale, split_scale


def _check_bc(name, M, batch, dim, dstate, activations):
    """Returns the group count of a (batch, N) or (batch, G, N) B or C."""
    check_tensor(name, M)
    check_dtype(name, M, activations)
    if M.dim() == 2:
        check_shape(name, M, (batch, dstate), "(batch, N)", state_size_note(dstate))
        return 1
    if M.dim() == 3:
        groups = M.shape[1]
        if groups < 1 or dim % groups:
            raise ValueError(f"{name} has {groups} groups (dim 1 of (batch, G, N)); "
                             f"G must divide dim = {dim}")
        check_shape(name, M, (batch, groups, dstate), "(batch, G, N)", state_size_note(dstate))
        return groups
    raise ValueError(f"{name} must be 2-D (batch, N) or 3-D (batch, G, N), got {M.dim()}-D "
                     f"with shape {tuple(M.shape)}")


def check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, delta_scale, a_scale,
                      delta_threshold):
    """Raises TypeError / ValueError naming the offending argument; returns the group counts of
    B and C."""
    check_tensor("x", x)
    check_dtype("x", x, ACTIVATION_DTYPES + F64)
    params, activations = param_dtypes("x", x)
    if x.dim() != 2 or 0 in x.shape:
        raise ValueError(f"x must be 2-D (batch, dim) with batch, dim >= 1, got shape "
                         f"{tuple(x.shape)}")
    batch, dim = x.shape
    check_tensor("A", A)
    check_dtype("A", A, params)
    if A.dim() != 2 or A.shape[0] != dim or A.shape[1] < 1:
        raise ValueError(f"A must have shape (dim, N) with dim = {dim} and N >= 1, got "
                         f"{tuple(A.shape)}")
    dstate = A.shape[1]
    check_param("state", state, (batch, dim, dstate), "(batch, dim, N)", params,
                state_size_note(dstate))
    if any(s == 0 and n > 1 for s, n in zip(state.stride(), state.shape)):
        raise ValueError("state must not be an expanded view (a zero stride): it is updated in "
                         "place")
    for name, t in (("dt", dt), ("z", z)):
        if name == "z" and t is None:
            continue
        check_tensor(name, t)
        check_dtype(name, t, activations)
        check_shape(name, t, (batch, dim), "(batch, dim) like x")
    groups = tuple(_check_bc(name, M, batch, dim, dstate, activations)
                   for name, M in (("B", B), ("C", C)))
    for name, t in (("D", D), ("dt_bias", dt_bias), ("delta_threshold", delta_threshold)):
        if t is not None:
            check_param(name, t, (dim,), "(dim,)", params)
    if not isinstance(dt_softplus, bool):
        raise TypeError(f"dt_softplus must be a bool, got {type(dt_softplus).__name__}")
    if delta_scale is not None:
        check_scale("delta_scale", delta_scale, {(dim,): "(dim,)"}, params)
    if a_scale is not None:
        check_scale("a_scale", a_scale, {(dim,): "(dim,)", (dim, dstate): "(dim, N)"}, params,
                    state_size_note(dstate))
    arguments = {"x": x, "state": state, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z,
                 "dt_bias": dt_bias, "delta_scale": delta_scale, "a_scale": a_scale,
                 "delta_threshold": delta_threshold}
    check_devices(arguments)
    if torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in arguments.values()):
        names = [k for k, t in arguments.items() if isinstance(t, torch.Tensor) and t.requires_grad]
        raise ValueError(f"selective_state_update_ext has no backward pass, but {', '.join(names)} "
                         "requires grad: call it under torch.no_grad() (train with "
                         "selective_scan_ext)")
    return groups


@torch.library.custom_op("fusedscan::selective_state_update", mutates_args=("state",))
def selective_state_update_op(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    z: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool,
    delta_scale_t: Optional[Tensor], delta_scale_f: Optional[float], a_scale_t: Optional[Tensor],
    a_scale_f: Optional[float], delta_threshold: Optional[Tensor], B_groups: int, C_groups: int,
) -> Tensor:
    """The step kernel's launch as a torch custom op: one opaque node under torch.compile."""
    return selective_state_update(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, join_scale(delta_scale_t, delta_scale_f),
        join_scale(a_scale_t, a_scale_f), delta_threshold, B_groups, C_groups)


@selective_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, delta_scale_t, delta_scale_f, a_scale_t,
      a_scale_f, delta_threshold, B_groups, C_groups):
    return torch.empty_like(x)


def selective_state_update_ext(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False, *, delta_scale=None, a_scale=None,
                               delta_threshold=None, check_values=False):
    """One decoding step of ``selective_scan_ext``: advances ``state`` in place by one token.

    Shapes (batch, dim; N states; G groups):
        state:          (batch, dim, N) float32, updated in place.
        x, dt, z:       (batch, dim), float32, float16 or bfloat16.
        A:              (dim, N) float32.
        B, C:           (batch, N) or grouped (batch, G, N) with dim % G == 0 (channel d
                        uses group d // (dim // G)); float32, float16 or bfloat16.
        D, dt_bias:     (dim,) float32.
        delta_scale:    float (finite, >= 0) or (dim,) float32.
        a_scale:        float (finite, >= 0), (dim,) or (dim, N) float32.
        delta_threshold: (dim,) float32.
    Float64 inputs (all floating ones, state included) compute in float64, except that the
    scalar multipliers (log2 e, float scales) are float32 kernel arguments (relative error
    about 1e-9).

    Semantics: exactly one position of ``selective_scan_ext`` with the same options (dt, dt_bias
    and dt_softplus are its delta, delta_bias and delta_softplus): Δ̂ = dt + dt_bias, softplus if
    dt_softplus, × delta_scale, set to 0 where Δ̂ <= delta_threshold; A_eff = A · a_scale;
        state ← exp(Δ̂ · A_eff) ⊙ state + (Δ̂ · x) · B
        out = Σ_n C[n] · state[n] + D · x, times silu(z) if z is given.
    A prefill ``selective_scan_ext(..., return_last_state=True)`` over L tokens followed by T
    steps from its last_state gives the scan over all L + T tokens.

    Returns out (batch, dim) in x's dtype. Inference only: raises ValueError when grad mode is on
    and an input requires grad. Bad input raises TypeError / ValueError naming the argument
    before the kernel runs; the call never synchronises with the host (CUDA-graph safe): the
    values of tensors are checked on the device, where a channel whose A_eff has a positive
    entry (A > 0 or a negative a_scale) or whose delta_scale is negative gets a NaN out and
    state. check_values=True checks A <= 0 and tensor scales >= 0 on the host instead, raising
    ValueError (at the cost of a synchronization).
    """
    B_groups, C_groups = check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                           delta_scale, a_scale, delta_threshold)
    if not isinstance(check_values, bool):
        raise TypeError(f"check_values must be a bool, got {type(check_values).__name__}")
    if check_values:
        check_decay_values(A, delta_scale, a_scale)
    D, dt_bias, delta_scale, delta_threshold = channel_vectors(D, dt_bias, delta_scale,
                                                               delta_threshold)
    if torch.compiler.is_compiling():
        return selective_state_update_op(
            state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, *split_scale(delta_scale),
            *split_scale(a_scale), delta_threshold, B_groups, C_groups)
    return selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, delta_scale,
                                  a_scale, delta_threshold, B_groups, C_groups)

