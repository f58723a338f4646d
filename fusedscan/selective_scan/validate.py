"""Argument checks for selective_scan_ext: every rule of the contract, before any kernel runs."""

from typing import NamedTuple, Optional

import torch

from fusedscan.selective_scan.options import BCLayout
from fusedscan.utils.checks import (
    ACTIVATION_DTYPES, F64, check_dtype, check_number_scale, check_param, check_scale,
    check_shape, check_tensor, param_dtypes, state_size_note,
)
from fusedscan.utils.device import check_devices
from fusedscan.utils.launch import PlanKey, SignatureCache

MAX_DSTATE = 256


def _check_bc(name, M, batch, dim, dstate, L, params, activations):
    """Returns whether M is variable (per token) and its group count (1 for fixed / ungrouped)."""
    check_tensor(name, M)
    if M.is_complex():
        raise NotImplementedError(f"{name}: complex B/C are not supported")
    if M.dim() == 2:
        check_dtype(name, M, params)
        check_shape(name, M, (dim, dstate), "(dim, N) for a fixed " + name,
                    state_size_note(dstate))
        return False, 1
    check_dtype(name, M, activations)
    if M.dim() == 3:
        check_shape(name, M, (batch, dstate, L), "(batch, N, L)", state_size_note(dstate))
        return True, 1
    if M.dim() == 4:
        groups = M.shape[1]
        if groups < 1 or dim % groups != 0:
            raise ValueError(f"{name} has {groups} groups (dim 1 of (batch, G, N, L)); "
                             f"G must divide dim = {dim}")
        check_shape(name, M, (batch, groups, dstate, L), "(batch, G, N, L)",
                    state_size_note(dstate))
        return True, groups
    raise ValueError(f"{name} must be 2-D (dim, N), 3-D (batch, N, L) or 4-D (batch, G, N, L), "
                     f"got {M.dim()}-D with shape {tuple(M.shape)}")


# Checked by the arguments' launch_signature.
_CHECKED = SignatureCache()


class Checked(NamedTuple):
    """What check_inputs found: B's and C's layout, the PlanKey of the arguments'
    launch_signature (None while torch.compile traces), and whether the (dim,) parameters
    need a contiguous copy (the kernels read them at unit stride)."""
    layout: BCLayout
    plan_key: Optional[PlanKey]
    copy_vectors: bool


def check_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                 initial_state, delta_scale, a_scale, delta_threshold, keep_idx):
    """Raises TypeError / ValueError / NotImplementedError naming the offending argument; reads
    no tensor's values (no host synchronization). Returns what it found, as Checked.

    The rules look only at what launch_signature records (types, dtypes, shapes, strides,
    devices, bools), so a signature that passed once is not checked again; the launchers key
    their plans by its PlanKey. A scale given as a number is keyed by its type only, so its
    value is checked on every call."""
    if delta_scale is not None:
        check_number_scale("delta_scale", delta_scale)
    if a_scale is not None:
        check_number_scale("a_scale", a_scale)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
            initial_state, delta_scale, a_scale, delta_threshold, keep_idx)
    if torch.compiler.is_compiling():  # traced tensors have no data pointer to sign
        return _checked(args, None)
    return _CHECKED.for_args(args, lambda: _checked(args, PlanKey()))


def _checked(args, plan_key):
    layout, copy_vectors = _check_inputs(*args)
    return Checked(layout, plan_key, copy_vectors)


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                  initial_state, delta_scale, a_scale, delta_threshold, keep_idx):
    check_tensor("u", u)
    check_tensor("delta", delta)
    check_dtype("u", u, ACTIVATION_DTYPES + F64)
    params, activations = param_dtypes("u", u)
    check_dtype("delta", delta, activations)
    if u.dim() != 3:
        raise ValueError(f"u must be 3-D (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape
    if batch < 1 or dim < 1 or L < 1:
        raise ValueError(f"u must have batch, dim and L >= 1, got shape {tuple(u.shape)}")
    if L >= 2**31 or max(u.stride(2), delta.stride(2)) * L >= 2**31:
        raise ValueError(f"u and delta must have L * stride(2) < 2**31, got L = {L}")
    check_shape("delta", delta, u.shape, "(batch, dim, L) like u")

    check_tensor("A", A)
    if A.is_complex():
        raise NotImplementedError("A: complex A is not supported; pass a real float32 (dim, N) A")
    check_dtype("A", A, params)
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim, N) with dim = {dim}, got {tuple(A.shape)}")
    dstate = A.shape[1]
    if not 1 <= dstate <= MAX_DSTATE:
        raise ValueError(f"A must have N (dim 1) between 1 and {MAX_DSTATE}, got {dstate}")

    B_variable, B_groups = _check_bc("B", B, batch, dim, dstate, L, params, activations)
    C_variable, C_groups = _check_bc("C", C, batch, dim, dstate, L, params, activations)

    if D is not None:
        check_param("D", D, (dim,), "(dim,)", params)
    if z is not None:
        check_tensor("z", z)
        check_dtype("z", z, activations)
        check_shape("z", z, u.shape, "(batch, dim, L) like u")
        if z.stride(2) * L >= 2**31:
            raise ValueError(f"z must have L * stride(2) < 2**31, got stride {z.stride(2)}")
    if delta_bias is not None:
        check_param("delta_bias", delta_bias, (dim,), "(dim,)", params)
    for name, flag in (("delta_softplus", delta_softplus), ("return_last_state", return_last_state)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if initial_state is not None:
        check_param("initial_state", initial_state, (batch, dim, dstate), "(batch, dim, N)",
                    params, state_size_note(dstate))
    if delta_scale is not None:
        check_scale("delta_scale", delta_scale, {(dim,): "(dim,)"}, params)
    if a_scale is not None:
        check_scale("a_scale", a_scale, {(dim,): "(dim,)", (dim, dstate): "(dim, N)"}, params,
                    state_size_note(dstate))
    if delta_threshold is not None:
        check_param("delta_threshold", delta_threshold, (dim,), "(dim,)", params)

    check_devices({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
                   "delta_bias": delta_bias, "initial_state": initial_state,
                   "delta_scale": delta_scale, "a_scale": a_scale,
                   "delta_threshold": delta_threshold, "keep_idx": keep_idx})

    if keep_idx is not None:
        check_tensor("keep_idx", keep_idx)
        check_dtype("keep_idx", keep_idx, (torch.int64,))
        if keep_idx.dim() != 2 or keep_idx.shape[0] != batch or keep_idx.shape[1] < 1:
            raise ValueError(f"keep_idx must have shape (batch, K) with batch = {batch} and K >= 1, "
                             f"got {tuple(keep_idx.shape)}")
    copy_vectors = not all(x.is_contiguous() for x in (D, delta_bias, delta_scale, delta_threshold)
                           if isinstance(x, torch.Tensor))
    return BCLayout(B_variable, C_variable, B_groups, C_groups), copy_vectors


def check_keep_idx_values(keep_idx, L):
    """keep_idx (batch, K) strictly increasing along each row, with values in [0, L); raises
    ValueError. Reads the values on the host (waits for the GPU)."""
    if keep_idx.shape[1] > 1 and not bool((keep_idx[:, 1:] > keep_idx[:, :-1]).all()):
        raise ValueError("keep_idx must be strictly increasing along each row")
    lo, hi = int(keep_idx[:, 0].min()), int(keep_idx[:, -1].max())
    if lo < 0 or hi >= L:
        raise ValueError(f"keep_idx values must lie in [0, L) = [0, {L}), got values in [{lo}, {hi}]")
