"""Triton's interpreter, made to patch triton.language once per launch instead of once per call
of a @triton.jit helper, and to look numpy dtypes up in a table built once.

Triton 3.6's interpreter rebinds every builtin of triton.language (and triton.language.core)
to its numpy semantics when a kernel launches, and again, with inspect.getmembers over four
namespaces, on every call of a @triton.jit helper inside the kernel; it never undoes the
helpers' rebinding. The launch's rebinding covers triton.language only, the helpers'
triton.language.core too (tl.zeros and the other helpers of triton.language.standard see core).
Here the launch rebinds both, and helpers called inside a launch skip the repeat. Its
_get_np_dtype, called for nearly every operation, builds a dict of twenty dtypes on each call;
here the same dict is built once. The same builtins run the same numpy code, so kernels compute
exactly what they computed before, in about 30% less time on this suite's kernels. Applied for
Triton 3.6 only, whose internals this relies on; other versions run unpatched."""

import numpy as np
import triton
import triton.language as tl
from triton.runtime import interpreter

# The scalar dtypes interpreter._get_np_dtype maps (bfloat16 and float8 stored as integers).
_SCALAR_DTYPES = (tl.int1, tl.float16, tl.float32, tl.float64, tl.int8, tl.uint8, tl.int16,
                  tl.uint16, tl.int32, tl.uint32, tl.int64, tl.uint64, tl.bfloat16, tl.float8e5,
                  tl.float8e5b16, tl.float8e4nv, tl.float8e4b8, tl.float8e4b15)


class _Language:
    """What interpreter._patch_lang reads of a function: globals that name both modules."""
    __globals__ = {"tl": tl, "core": tl.core}


def patch_interpreter():
    """Patches Triton's interpreter as the module docstring says (once); False where not
    applied."""
    if not triton.__version__.startswith("3.6.") or getattr(interpreter, "_fusedscan_once", 0):
        return False
    launch = interpreter.GridExecutor.__call__
    helper_call = interpreter.InterpretedFunction.__call__
    depth = [0]

    def run_grid(self, *args, **kwargs):
        scope = interpreter._patch_lang(_Language)
        depth[0] += 1
        try:
            return launch(self, *args, **kwargs)
        finally:
            depth[0] -= 1
            scope.restore()

    def call_helper(self, *args, **kwargs):
        if not depth[0]:
            return helper_call(self, *args, **kwargs)
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise interpreter.InterpreterError(repr(e)) from e

    np_dtype = interpreter._get_np_dtype
    table = {dtype: np_dtype(dtype) for dtype in _SCALAR_DTYPES}
    pointer = np.dtype(np.uint64)

    def get_np_dtype(tt_dtype):
        if isinstance(tt_dtype, tl.block_type):
            tt_dtype = tt_dtype.element_ty
        if isinstance(tt_dtype, tl.pointer_type):
            return pointer
        found = table.get(tt_dtype)
        return found if found is not None else np_dtype(tt_dtype)

    interpreter.GridExecutor.__call__ = run_grid
    interpreter.InterpretedFunction.__call__ = call_helper
    interpreter._get_np_dtype = get_np_dtype
    interpreter._fusedscan_once = 1
    return True
