"""Host-side helpers of the kernel launchers: scales as kernel arguments, strides of optional
tensors, and launch plans that skip Triton's per-call launch work."""

import torch
import triton
from torch import Tensor

try:  # torch's C++ comparison of tensors' dtype, device, sizes and strides (torch.compile's guards)
    from torch._C._dynamo.guards import TensorGuards
except ImportError:
    TensorGuards = None

from fusedscan.utils.device import INTERPRETED
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


def contiguous_strides(shape):
    """The strides of a contiguous tensor of this shape."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def launch_signature(*xs):
    """What a launch plan depends on in the given arguments: a tensor's dtype, shape, strides,
    device (a CUDA device by its index: torch.device objects are slow to make; others, whose
    get_device() is -1, by their device) and whether its address is a multiple of 16 (Triton
    specializes pointers on it); None and bools as they are; any other value by its type only
    (numbers reach the kernels as per-call values)."""
    key = []
    for x in xs:
        if x is None or x is True or x is False:
            key.append(x)
        elif isinstance(x, torch.Tensor):
            index = x.get_device()
            key.append((x.dtype, x.shape, x.stride(), x.device if index < 0 else index,
                        x.data_ptr() % 16 == 0))
        else:
            key.append(type(x))
    return tuple(key)


class PlanKey:
    """Stands for one checked launch_signature in the launchers' plan caches, hashed and compared
    by identity: a call hashes its whole signature once (to find its checks) and its plans by
    this key."""

    __slots__ = ()


class SignatureCache(dict):
    """Results (launch plans, checked layouts) by keys made of launch_signatures or their
    PlanKeys, all dropped at once past `limit` entries (a model sees a few signatures; a stream
    of new sequence lengths must not grow memory without bound). A build that raises stores
    nothing."""

    def __init__(self, limit=1024):
        super().__init__()
        self.limit = limit
        # for_args' recent signatures: {the arguments' types: [SignatureGuard], latest first}.
        self.guards = {}

    def get_or_build(self, key, build):
        plan = self.get(key)
        if plan is None:
            if len(self) >= self.limit:
                self.clear()
                self.guards.clear()
            plan = self[key] = build()
        return plan

    def for_args(self, args, build, recent=8):
        """get_or_build(launch_signature(*args), build), for a signature among the `recent` last
        ones with the same argument types without making the signature: their tensors are
        compared by a SignatureGuard."""
        types = tuple(map(type, args))
        guards = self.guards.get(types)
        if guards:
            for i, guard in enumerate(guards):
                if guard.matches(args):
                    if i:
                        guards.insert(0, guards.pop(i))
                    return guard.value
        value = self.get_or_build(launch_signature(*args), build)
        guard = SignatureGuard.of(args, value)
        if guard is not None:
            if len(self.guards) >= self.limit:
                self.guards.clear()
            guards = self.guards.setdefault(types, [])
            guards.insert(0, guard)
            del guards[recent:]
        return value


def _aligned(tensors):
    """Which of the tensors have an address that is a multiple of 16, as bits."""
    bits = 0
    for i, x in enumerate(tensors):
        if x.data_ptr() % 16 == 0:
            bits |= 1 << i
    return bits


class SignatureGuard:
    """Whether arguments of the types it was made from have its arguments' launch_signature,
    tested without making it: the bools by identity and the tensors by torch's TensorGuards
    (dtype, device, sizes, strides, requires_grad and dispatch keys, compared in C++) and by
    their alignment. value: what the signature maps to."""

    __slots__ = ("bools", "at", "check", "aligned", "value")

    @classmethod
    def of(cls, args, value):
        """A guard of args (the types of every other argument are the caller's key), or None
        where torch has no TensorGuards of this form."""
        if TensorGuards is None:
            return None
        self = cls()
        self.at = tuple(i for i, x in enumerate(args) if isinstance(x, torch.Tensor))
        self.bools = tuple((i, x) for i, x in enumerate(args) if x is True or x is False)
        tensors = tuple(map(args.__getitem__, self.at))
        try:
            self.check = TensorGuards(
                *tensors, dynamic_dims_sizes=[list(x.shape) for x in tensors],
                dynamic_dims_strides=[list(x.stride()) for x in tensors]).check
        except (TypeError, RuntimeError):  # another torch's signature
            return None
        self.aligned, self.value = _aligned(tensors), value
        return self

    def matches(self, args):
        for i, x in self.bools:
            if args[i] is not x:
                return False
        tensors = tuple(map(args.__getitem__, self.at))
        return self.check(*tensors) and _aligned(tensors) == self.aligned


_stream_of = None


def _current_stream(device):
    global _stream_of
    if _stream_of is None:
        _stream_of = triton.runtime.driver.active.get_current_stream
    return _stream_of(device)


def _hooked(hook):
    """Whether a Triton launch hook (None, a function or a HookChain of them) does anything."""
    return getattr(hook, "calls", hook) not in (None, [])


def compiled_launcher(compiled):
    """(launcher, head) of a compiled kernel: launcher(gridX, gridY, gridZ, stream, *head,
    *kernel arguments) launches it without hooks. With Triton 3.6's CUDA launcher and a kernel
    that needs no scratch memory, its C function itself (its Python wrapper would only pass the
    arguments on, ~1 µs a launch); otherwise the compiled kernel's `run`."""
    run = compiled.run  # binds the kernel's handles (compiled.function) on first use
    if (triton.__version__.startswith("3.6.") and type(run).__name__ == "CudaLauncher"
            and run.global_scratch_size == 0 and run.profile_scratch_size == 0):
        return run.launch, (compiled.function, run.launch_cooperative_grid, run.launch_pdl,
                            None, None, compiled.packed_metadata, None, None, None)
    return run, (compiled.function, compiled.packed_metadata, None, None, None)


class LaunchPlan:
    """One launch of a Triton kernel whose arguments after the first `dynamic` are fixed.

    The first call launches through Triton (compiling if needed) with keyword arguments; later
    calls hand the per-call arguments straight to the compiled kernel's launcher, skipping
    Triton's per-call binding, specialization and cache lookup (tens of µs per launch:
    docs/kernel-log.md). This is right only while every argument that Triton specializes on is
    the same as at the first call: the caller keys its plans by the launch_signature (or its
    PlanKey) of every tensor it passes and by everything the fixed arguments were computed
    from. Under Triton's interpreter, or with a launch hook installed (a profiler), every call
    goes through Triton.

    A pointer argument may be None (an absent input the kernel never reads): the compiled
    kernel gets a null pointer, and Triton's own path gets `absent` in its place (Triton would
    compile None as a constant)."""

    def __init__(self, kernel, grid, dynamic, device, absent, **static):
        names = kernel.arg_names
        self.kernel, self.names, self.device, self.absent = kernel, names, device, absent
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.static = tuple(static.pop(n) for n in names[dynamic:])
        self.options = static  # launch options: num_warps, maxnreg
        # After the first launch: the compiled launcher and its arguments between the stream and
        # the kernel's own.
        self.launcher, self.head = None, ()

    def __call__(self, *args):
        launcher = self.launcher
        if launcher is not None and not _hooked(triton.knobs.runtime.launch_enter_hook) \
                and not _hooked(triton.knobs.runtime.launch_exit_hook):
            # Tensors as their addresses: the launcher would ask each for data_ptr through
            # Python's attribute lookup and the driver for its device pointer (~0.5 µs each).
            launcher(*self.grid, _current_stream(self.device), *self.head,
                     *[a.data_ptr() if isinstance(a, Tensor) else a for a in args], *self.static)
            return
        c = self.launch_through_triton(*args)
        if not INTERPRETED:
            self.launcher, self.head = compiled_launcher(c.result() if hasattr(c, "result") else c)

    def launch_through_triton(self, *args):
        """The same launch by Triton's own path; returns what Triton returns."""
        args = [self.absent if a is None else a for a in args]
        return self.kernel[self.grid](**dict(zip(self.names, [*args, *self.static])),
                                      **self.options)
