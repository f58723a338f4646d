"""Primitives of the argument checks: each raises TypeError / ValueError naming the argument and
what was expected."""

import math
import numbers

import torch

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# float64 activations put the kernels in float64 throughout (for gradient checks); every other
# floating tensor must then be float64 too.
F64 = (torch.float64,)


class Dtypes(tuple):
    """Allowed dtypes and why they are the allowed ones, which a dtype error says."""

    def __new__(cls, dtypes, why=""):
        allowed = super().__new__(cls, dtypes)
        allowed.why = why
        return allowed


def dtype_names(dtypes):
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def check_dtype(name, x, allowed):
    if x.dtype not in allowed:
        raise TypeError(f"{name} must have dtype {dtype_names(allowed)}"
                        f"{getattr(allowed, 'why', '')}, got {str(x.dtype).replace('torch.', '')}")


def check_shape(name, x, expected, what, note=""):
    """x of shape `expected`, described as `what`; `note` says where a size came from."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {what} = {tuple(expected)}, got "
                         f"{tuple(x.shape)}{note}")


def check_param(name, x, shape, what, dtypes, note=""):
    """A parameter tensor of a fixed shape."""
    check_tensor(name, x)
    check_dtype(name, x, dtypes)
    check_shape(name, x, shape, what, note)


def check_number_scale(name, x):
    """A scale given as a Python number must be finite and non-negative: a negative one turns
    the state's decay exp(Δ̂·A) into growth without bound. Other types pass (check_scale
    judges them); a tensor's values are not read (that would wait for the GPU)."""
    if isinstance(x, numbers.Real) and not isinstance(x, bool) and not 0 <= x < math.inf:
        raise ValueError(f"{name} must be finite and >= 0 (a negative scale makes the state "
                         f"grow without bound), got {x!r}")


def check_scale(name, x, shapes, dtypes, note=""):
    """A Python number (finite, >= 0) or a tensor of one of `shapes` ({shape: description})."""
    check_number_scale(name, x)
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a {dtype_names(dtypes)} tensor of shape "
                        f"{' or '.join(shapes.values())}, got {type(x).__name__}")
    if isinstance(x, torch.Tensor):
        check_dtype(name, x, dtypes)
        if tuple(x.shape) not in shapes:
            raise ValueError(f"{name} must have shape "
                             f"{' or '.join(f'{w} = {s}' for s, w in shapes.items())}, "
                             f"got {tuple(x.shape)}{note}")


def check_decay_values(A, delta_scale, a_scale):
    """A <= 0 and tensor scales >= 0, read on the host (this waits for the GPU): otherwise the
    state grows without bound. Without this check the kernels make such a channel's outputs
    NaN (where A_eff = A·a_scale > 0 or delta_scale < 0)."""
    checks = [("A", A, A > 0, "<= 0 (a positive entry")]
    for name, x in (("delta_scale", delta_scale), ("a_scale", a_scale)):
        if isinstance(x, torch.Tensor):
            checks.append((name, x, x < 0, ">= 0 (a negative scale"))
    for name, x, bad, rule in checks:
        if bool(bad.any()):
            at = tuple(bad.nonzero()[0].tolist())
            raise ValueError(f"{name} must be {rule} makes the state grow without bound), got "
                             f"{name}[{', '.join(map(str, at))}] = {x[at].item():g}")


def param_dtypes(name, activation):
    """(parameter dtypes, activation dtypes) allowed beside the activation tensor `name`, each
    saying in its errors that `name` decides them."""
    if activation.dtype == torch.float64:
        why = f" like {name} (a float64 {name} runs the kernels in float64 throughout)"
        return Dtypes(F64, why), Dtypes(F64, why)
    return (Dtypes((torch.float32,), f" (unless {name} is float64)"),
            Dtypes(ACTIVATION_DTYPES, f" (float64 only with a float64 {name})"))


def state_size_note(dstate):
    """What a shape error says of N."""
    return f"; N = {dstate} is A's dim 1"
