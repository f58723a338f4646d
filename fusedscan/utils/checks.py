"""Primitives of the argument checks: each raises TypeError / ValueError naming the argument and
what was expected."""

import numbers

import torch

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# float64 activations put the kernels in float64 throughout (for gradient checks); every other
# floating tensor must then be float64 too.
F64 = (torch.float64,)


def dtype_names(dtypes):
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def check_dtype(name, x, allowed):
    if x.dtype not in allowed:
        raise TypeError(f"{name} must have dtype {dtype_names(allowed)}, got "
                        f"{str(x.dtype).replace('torch.', '')}")


def check_shape(name, x, expected, what):
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {what} = {tuple(expected)}, got {tuple(x.shape)}")


def check_param(name, x, shape, what, dtypes):
    """A parameter tensor of a fixed shape."""
    check_tensor(name, x)
    check_dtype(name, x, dtypes)
    check_shape(name, x, shape, what)


def check_scale(name, x, shapes, dtypes):
    """A Python number or a tensor of one of `shapes` ({shape: description})."""
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a {dtype_names(dtypes)} tensor of shape "
                        f"{' or '.join(shapes.values())}, got {type(x).__name__}")
    if isinstance(x, torch.Tensor):
        check_dtype(name, x, dtypes)
        if tuple(x.shape) not in shapes:
            raise ValueError(f"{name} must have shape "
                             f"{' or '.join(f'{w} = {s}' for s, w in shapes.items())}, "
                             f"got {tuple(x.shape)}")


def param_dtypes(activation):
    """(parameter dtypes, activation dtypes) allowed beside an activation tensor."""
    if activation.dtype == torch.float64:
        return F64, F64
    return (torch.float32,), ACTIVATION_DTYPES
