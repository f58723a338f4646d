"""The kernels as torch custom ops: schema, fake (meta) implementations and autograd checked by
torch.library.opcheck; torch.compile(fullgraph=True) traces through them without a graph
break; the decode step replays in a CUDA graph."""

import pytest
import torch

from fusedscan import selective_scan_ext, selective_state_update_ext
from fusedscan.methods.decimamba import delta_norm_op
from fusedscan.selective_scan.interface import selective_scan_fwd_op
from fusedscan.selective_scan.options import ScanOptions, op_args as scan_op_args
from fusedscan.selective_scan.validate import check_inputs
from fusedscan.utils.launch import split_scale
from fusedscan.selective_state_update.interface import selective_state_update_op
from tests.conftest import DEVICE, ON_GPU
from tests.helpers import make_case, rel_err

SHAPE = (2, 64, 300, 16) if ON_GPU else (1, 4, 37, 3)
CASES = {
    "plain": dict(),
    "scales-state": dict(initial_state=True, delta_scale="float", a_scale="dim_n",
                         delta_threshold=True, B_kind="grouped"),
    "keep-tensor-scale": dict(delta_scale="tensor", a_scale="float", keep=9, C_kind="fixed"),
}


def op_args(args, kwargs):
    """selective_scan_fwd_op's arguments for a make_case case."""
    u, delta, A, B, C, D, z, delta_bias, softplus = args
    layout = check_inputs(u, delta, A, B, C, D, z, delta_bias, softplus, False,
                          kwargs.get("initial_state"), kwargs.get("delta_scale"),
                          kwargs.get("a_scale"), kwargs.get("delta_threshold"),
                          kwargs.get("keep_idx")).layout
    opts = ScanOptions(D, z, delta_bias, softplus, **kwargs)
    return (u, delta, A, B, C, *scan_op_args(opts, layout))


@pytest.mark.parametrize("case", CASES)
def test_opcheck_scan(case):
    args, kwargs = make_case(*SHAPE, **CASES[case])
    for i in (0, 1, 2):
        args[i] = args[i].requires_grad_()
    torch.library.opcheck(selective_scan_fwd_op, op_args(args, kwargs))


def test_opcheck_step():
    batch, dim, _, dstate = SHAPE
    args, kwargs = make_case(batch, dim, 1, dstate, B_kind="grouped", delta_scale="tensor",
                             a_scale="float", delta_threshold=True)
    u, delta, A, B, C, D, z, bias, softplus = args
    state = torch.randn(batch, dim, dstate, device=DEVICE)
    torch.library.opcheck(selective_state_update_op, (
        state, u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0], D, z[..., 0], bias, softplus,
        *split_scale(kwargs["delta_scale"]), *split_scale(kwargs["a_scale"]),
        kwargs["delta_threshold"], 2, 1))


def test_opcheck_delta_norm():
    batch, dim, L, _ = SHAPE
    delta = torch.randn(batch, dim, L, device=DEVICE)
    bias = torch.randn(dim, device=DEVICE)
    for args in ((delta, bias, True), (delta.half(), None, False)):
        torch.library.opcheck(delta_norm_op, args)


def test_compile_fullgraph_forward_and_backward():
    """No graph break inside the scan; outputs and gradients equal eager mode. (inductor on
    CUDA; on the CPU aot_eager, which traces the same graph without compiling C++.)"""
    args, kwargs = make_case(*SHAPE, initial_state=True, a_scale="dim", delta_scale="float",
                             delta_threshold=True)
    torch._dynamo.reset()

    def loss(u, delta, A):
        out, last = selective_scan_ext(u, delta, A, *args[3:], True, **kwargs)
        return out.float().square().mean() + last.square().mean()

    compiled = torch.compile(loss, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    results = []
    for fn in (loss, compiled):
        leaves = [a.detach().clone().requires_grad_() for a in args[:3]]
        value = fn(*leaves)
        value.backward()
        results.append((value.detach(), [x.grad for x in leaves]))
    assert rel_err(results[1][0], results[0][0]) <= 1e-6
    for g_compiled, g_eager in zip(results[1][1], results[0][1]):
        assert rel_err(g_compiled, g_eager) <= 1e-6


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a CUDA GPU")
def test_step_in_a_cuda_graph():
    """A captured decode step replays with new inputs copied into its buffers and gives the
    eager step's output and state."""
    batch, dim, _, dstate = SHAPE
    args, kwargs = make_case(batch, dim, 1, dstate, a_scale="dim", delta_threshold=True)
    u, delta, A, B, C, D, z, bias, softplus = args
    step = dict(a_scale=kwargs["a_scale"], delta_threshold=kwargs["delta_threshold"])
    state = torch.randn(batch, dim, dstate, device=DEVICE)
    x, dt, zz = u[..., 0].clone(), delta[..., 0].clone(), z[..., 0].clone()
    Bs, Cs = B[..., 0].clone(), C[..., 0].clone()
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up (compiles) outside the capture
            selective_state_update_ext(state.clone(), x, dt, A, Bs, Cs, D, zz, bias, softplus,
                                       **step)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = selective_state_update_ext(state, x, dt, A, Bs, Cs, D, zz, bias, softplus,
                                             **step)
        for _ in range(3):
            new = [torch.randn_like(t) for t in (x, dt, zz, Bs, Cs)]
            start = torch.randn_like(state)
            for buf, value in zip((x, dt, zz, Bs, Cs), new):
                buf.copy_(value)
            state.copy_(start)
            graph.replay()
            expected_state = start.clone()
            expected = selective_state_update_ext(expected_state, *new[:2], A, new[3], new[4], D,
                                                  new[2], bias, softplus, **step)
            assert torch.equal(out, expected) and torch.equal(state, expected_state)
