"""Argument checks for selective_scan_ext: every rule of the contract, before any kernel runs."""

import numbers

import torch

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_DSTATE = 256
# float64 u puts the kernels in float64 throughout (for gradient checks); every other floating
# tensor must then be float64 too.
F64 = (torch.float64,)


def _names(dtypes):
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def _tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def _dtype(name, x, allowed):
    if x.dtype not in allowed:
        raise TypeError(f"{name} must have dtype {_names(allowed)}, got {str(x.dtype).replace('torch.', '')}")


def _shape(name, x, expected, what):
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {what} = {tuple(expected)}, got {tuple(x.shape)}")


def _param(name, x, shape, what, dtypes):
    """A parameter tensor of a fixed shape."""
    _tensor(name, x)
    _dtype(name, x, dtypes)
    _shape(name, x, shape, what)


def _scale(name, x, shapes, dtypes):
    """A Python number or a tensor of one of `shapes` ({shape: description})."""
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a {_names(dtypes)} tensor of shape "
                        f"{' or '.join(shapes.values())}, got {type(x).__name__}")
    if isinstance(x, torch.Tensor):
        _dtype(name, x, dtypes)
        if tuple(x.shape) not in shapes:
            raise ValueError(f"{name} must have shape {' or '.join(f'{w} = {s}' for s, w in shapes.items())}, "
                             f"got {tuple(x.shape)}")


def _check_bc(name, M, batch, dim, dstate, L, params, activations):
    """Returns whether M is variable (per token) and its group count (1 for fixed / ungrouped)."""
    _tensor(name, M)
    if M.is_complex():
        raise NotImplementedError(f"{name}: complex B/C are not supported")
    if M.dim() == 2:
        _dtype(name, M, params)
        _shape(name, M, (dim, dstate), "(dim, N) for a fixed " + name)
        return False, 1
    _dtype(name, M, activations)
    if M.dim() == 3:
        _shape(name, M, (batch, dstate, L), "(batch, N, L)")
        return True, 1
    if M.dim() == 4:
        groups = M.shape[1]
        if groups < 1 or dim % groups != 0:
            raise ValueError(f"{name} has {groups} groups (dim 1 of (batch, G, N, L)); "
                             f"G must divide dim = {dim}")
        _shape(name, M, (batch, groups, dstate, L), "(batch, G, N, L)")
        return True, groups
    raise ValueError(f"{name} must be 2-D (dim, N), 3-D (batch, N, L) or 4-D (batch, G, N, L), "
                     f"got {M.dim()}-D with shape {tuple(M.shape)}")


def check_devices(arguments, interpreted):
    """All tensors among `arguments` ({name: value}, the first one a tensor) on the first one's
    device, which must be CUDA, or the CPU when the kernels run in Triton's interpreter."""
    tensors = {k: v for k, v in arguments.items() if isinstance(v, torch.Tensor)}
    first, x0 = next(iter(tensors.items()))
    for name, x in tensors.items():
        if x.device != x0.device:
            raise ValueError(f"{name} is on {x.device} but {first} is on {x0.device}; "
                             "all tensors must be on one device")
    if x0.device.type == "cpu":
        if not interpreted:
            raise ValueError(f"{first} is on the CPU: fusedscan's kernels run on CUDA GPUs, or on "
                             "the CPU only through Triton's interpreter (set TRITON_INTERPRET=1 "
                             "before importing fusedscan)")
    elif x0.device.type != "cuda":
        raise ValueError(f"{first} must be on a CUDA device (or the CPU under TRITON_INTERPRET=1), "
                         f"got {x0.device}")
    elif interpreted:
        raise ValueError(f"{first} is on CUDA but TRITON_INTERPRET=1 was set when fusedscan was "
                         "imported")


def check_inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                 initial_state, delta_scale, a_scale, delta_threshold, keep_idx, interpreted,
                 trust_keep_idx=False):
    """Raises TypeError / ValueError / NotImplementedError naming the offending argument.

    Returns (B_variable, B_groups, C_variable, C_groups). `interpreted` tells whether the
    kernels were built for Triton's CPU interpreter."""
    _tensor("u", u)
    _tensor("delta", delta)
    _dtype("u", u, ACTIVATION_DTYPES + F64)
    params, activations = (F64, F64) if u.dtype == torch.float64 else ((torch.float32,),
                                                                        ACTIVATION_DTYPES)
    _dtype("delta", delta, activations)
    if u.dim() != 3:
        raise ValueError(f"u must be 3-D (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape
    if batch < 1 or dim < 1 or L < 1:
        raise ValueError(f"u must have batch, dim and L >= 1, got shape {tuple(u.shape)}")
    if L >= 2**31 or max(u.stride(2), delta.stride(2)) * L >= 2**31:
        raise ValueError(f"u and delta must have L * stride(2) < 2**31, got L = {L}")
    _shape("delta", delta, u.shape, "(batch, dim, L) like u")

    _tensor("A", A)
    if A.is_complex():
        raise NotImplementedError("A: complex A is not supported; pass a real float32 (dim, N) A")
    _dtype("A", A, params)
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (dim, N) with dim = {dim}, got {tuple(A.shape)}")
    dstate = A.shape[1]
    if not 1 <= dstate <= MAX_DSTATE:
        raise ValueError(f"A must have N (dim 1) between 1 and {MAX_DSTATE}, got {dstate}")

    B_variable, B_groups = _check_bc("B", B, batch, dim, dstate, L, params, activations)
    C_variable, C_groups = _check_bc("C", C, batch, dim, dstate, L, params, activations)

    if D is not None:
        _param("D", D, (dim,), "(dim,)", params)
    if z is not None:
        _tensor("z", z)
        _dtype("z", z, activations)
        _shape("z", z, u.shape, "(batch, dim, L) like u")
        if z.stride(2) * L >= 2**31:
            raise ValueError(f"z must have L * stride(2) < 2**31, got stride {z.stride(2)}")
    if delta_bias is not None:
        _param("delta_bias", delta_bias, (dim,), "(dim,)", params)
    for name, flag in (("delta_softplus", delta_softplus), ("return_last_state", return_last_state)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if initial_state is not None:
        _param("initial_state", initial_state, (batch, dim, dstate), "(batch, dim, N)", params)
    if delta_scale is not None:
        _scale("delta_scale", delta_scale, {(dim,): "(dim,)"}, params)
    if a_scale is not None:
        _scale("a_scale", a_scale, {(dim,): "(dim,)", (dim, dstate): "(dim, N)"}, params)
    if delta_threshold is not None:
        _param("delta_threshold", delta_threshold, (dim,), "(dim,)", params)

    check_devices({"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z,
                   "delta_bias": delta_bias, "initial_state": initial_state,
                   "delta_scale": delta_scale, "a_scale": a_scale,
                   "delta_threshold": delta_threshold, "keep_idx": keep_idx}, interpreted)

    if keep_idx is not None:
        _tensor("keep_idx", keep_idx)
        _dtype("keep_idx", keep_idx, (torch.int64,))
        if keep_idx.dim() != 2 or keep_idx.shape[0] != batch or keep_idx.shape[1] < 1:
            raise ValueError(f"keep_idx must have shape (batch, K) with batch = {batch} and K >= 1, "
                             f"got {tuple(keep_idx.shape)}")
        if trust_keep_idx:
            return B_variable, B_groups, C_variable, C_groups
        if keep_idx.shape[1] > 1 and not bool((keep_idx[:, 1:] > keep_idx[:, :-1]).all()):
            raise ValueError("keep_idx must be strictly increasing along each row")
        lo, hi = int(keep_idx[:, 0].min()), int(keep_idx[:, -1].max())
        if lo < 0 or hi >= L:
            raise ValueError(f"keep_idx values must lie in [0, L) = [0, {L}), got values in [{lo}, {hi}]")
    return B_variable, B_groups, C_variable, C_groups
