"""Input generation and comparison shared by the tests."""

import contextlib
import math

import torch

from reference import delta_hat, selective_scan_ref
from tests.conftest import DEVICE

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BC_KINDS = ["variable", "fixed", "grouped"]
OPTIONS = ["D", "z", "delta_bias", "delta_softplus", "return_last_state", "initial_state",
           "delta_scale", "a_scale", "delta_threshold", "keep_idx"]


def rel_err(x, ref):
    """‖x − ref‖ / ‖ref‖ in float64; infinite if x has a NaN or inf where ref is finite."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return math.inf
    return ((x - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@contextlib.contextmanager
def nan_filled_outputs():
    """Every tensor fusedscan allocates with torch.empty starts as NaN (floats) or -1 (ints), so
    an element the kernel forgets to write fails the comparison."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(math.nan) if t.is_floating_point() else t.fill_(-1)

    torch.empty = empty
    try:
        yield
    finally:
        torch.empty = real_empty


def make_bc(kind, batch, dim, dstate, L, dtype, groups=2):
    if kind == "fixed":
        return torch.randn(dim, dstate, device=DEVICE)
    if kind == "variable":
        return torch.randn(batch, dstate, L, device=DEVICE).to(dtype)
    return torch.randn(batch, groups, dstate, L, device=DEVICE).to(dtype)


def thresholds_between_values(dt, lo=0.2, hi=0.4):
    """Per-channel thresholds in the middle of the widest gap between distinct observed Δ̂
    values whose rank lies in [lo, hi) of the channel (so float32 and float64 agree on every
    comparison), filtering about 30% of the tokens; every other channel gets −inf."""
    thr = torch.full((dt.shape[1],), -math.inf, dtype=torch.float64)
    for d in range(0, dt.shape[1], 2):
        vals = dt[:, d].reshape(-1).double().unique()  # sorted, distinct
        if vals.numel() > 1:
            a = min(int(lo * vals.numel()), vals.numel() - 2)
            b = max(min(int(hi * vals.numel()), vals.numel() - 1), a + 1)
            k = a + int((vals[a + 1:b + 1] - vals[a:b]).argmax())
            thr[d] = (vals[k] + vals[k + 1]) / 2
    return thr.float().to(dt.device)


def make_case(batch, dim, L, dstate, *, dtype=torch.float32, B_kind="variable", C_kind="variable",
              groups=2, D=True, z=True, delta_bias=True, delta_softplus=True,
              initial_state=False, delta_scale=None, a_scale=None, delta_threshold=False,
              keep=None):
    """Random inputs for selective_scan_ext as (args, kwargs). delta_scale: None, "float" or
    "tensor"; a_scale: None, "float", "dim" or "dim_n"; keep: None or the number K of kept
    positions per row."""
    dev = DEVICE
    u = torch.randn(batch, dim, L, device=dev).to(dtype)
    if delta_softplus:
        delta = (0.7 * torch.randn(batch, dim, L, device=dev) - 1.0).to(dtype)
    else:
        delta = (0.5 * torch.rand(batch, dim, L, device=dev)).to(dtype)
    A = -(0.2 + 1.5 * torch.rand(dim, dstate, device=dev))
    B = make_bc(B_kind, batch, dim, dstate, L, dtype, groups)
    C = make_bc(C_kind, batch, dim, dstate, L, dtype, groups)
    kwargs = {}
    args = [u, delta, A, B, C,
            torch.randn(dim, device=dev) if D else None,
            torch.randn(batch, dim, L, device=dev).to(dtype) if z else None,
            # Without softplus a negative Δ̂ would make the state grow without bound.
            (0.3 * torch.randn(dim, device=dev) if delta_softplus
             else 0.3 * torch.rand(dim, device=dev)) if delta_bias else None,
            delta_softplus]
    if initial_state:
        kwargs["initial_state"] = torch.randn(batch, dim, dstate, device=dev)
    if delta_scale == "float":
        kwargs["delta_scale"] = 0.7
    elif delta_scale == "tensor":
        kwargs["delta_scale"] = 0.5 + torch.rand(dim, device=dev)
    if a_scale == "float":
        kwargs["a_scale"] = 0.8
    elif a_scale == "dim":
        kwargs["a_scale"] = 0.5 + torch.rand(dim, device=dev)
    elif a_scale == "dim_n":
        kwargs["a_scale"] = 0.5 + torch.rand(dim, dstate, device=dev)
    if delta_threshold:
        dt = delta_hat(delta.double(), None if args[7] is None else args[7].double(),
                       delta_softplus, kwargs.get("delta_scale"))
        kwargs["delta_threshold"] = thresholds_between_values(dt)
    if keep is not None:
        kwargs["keep_idx"] = torch.stack(
            [torch.randperm(L, device=dev)[:keep].sort().values for _ in range(batch)])
    return args, kwargs


def strided(x):
    """A non-contiguous tensor with x's values (every stride doubled in the last dimension)."""
    return torch.stack([x, torch.full_like(x, math.nan)], -1)[..., 0]


def strided_case(batch, dim, L, dstate, **options):
    """make_case with every input a non-contiguous view: activations transposed, parameter and
    scale tensors strided."""
    args, kwargs = make_case(batch, dim, L, dstate, z=True, initial_state=True,
                             delta_scale="tensor", a_scale="dim_n", delta_threshold=True,
                             **options)
    args[0] = args[0].transpose(1, 2).contiguous().transpose(1, 2)
    args[1] = args[1].transpose(1, 2).contiguous().transpose(1, 2)
    args[2] = args[2].t().contiguous().t()
    args[3] = args[3].transpose(1, 2).contiguous().transpose(1, 2)
    args[6] = args[6].permute(2, 0, 1).contiguous().permute(1, 2, 0)
    args[5], args[7] = strided(args[5]), strided(args[7])
    kwargs = {k: strided(v) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in kwargs.items()}
    return args, kwargs


def to_double(x):
    return x.double() if torch.is_tensor(x) and x.is_floating_point() else x


def reference(args, kwargs, return_last_state=True):
    """The float64 reference on the same (already rounded) inputs."""
    return selective_scan_ref(*[to_double(a) for a in args], return_last_state,
                              **{k: to_double(v) for k, v in kwargs.items()})


def option_ids(flags):
    return "-".join(o for o, on in zip(OPTIONS, flags) if on) or "none"


def combination_case(flags, shape):
    """Inputs for one combination of OPTIONS (flags: one bool per option) as
    (args, kwargs, dtype, return_last_state). The dtype, the B/C forms and the form of the
    scales cycle with the combination so that each is met many times."""
    on = dict(zip(OPTIONS, flags))
    index = sum(bit << i for i, bit in enumerate(flags))
    dtype = DTYPES[index % 3]
    batch, dim, L, dstate = shape
    args, kwargs = make_case(
        batch, dim, L, dstate, dtype=dtype, B_kind=BC_KINDS[index % 3],
        C_kind=BC_KINDS[(index // 3) % 3], D=on["D"], z=on["z"], delta_bias=on["delta_bias"],
        delta_softplus=on["delta_softplus"], initial_state=on["initial_state"],
        delta_scale=("float", "tensor")[index % 2] if on["delta_scale"] else None,
        a_scale=("float", "dim", "dim_n")[index % 3] if on["a_scale"] else None,
        delta_threshold=on["delta_threshold"], keep=L // 3 if on["keep_idx"] else None)
    return args, kwargs, dtype, on["return_last_state"]
