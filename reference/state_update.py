"""Reference for ``fusedscan.selective_state_update_ext``: one step of the sequential scan."""

from .selective_scan import selective_scan_ref


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False, *, delta_scale=None, a_scale=None,
                               delta_threshold=None):
    """Same arguments as ``selective_state_update_ext``; returns (out (batch, dim), new state)
    and leaves ``state`` unchanged. It is ``selective_scan_ref`` over a single token."""
    out, new_state = selective_scan_ref(
        x[..., None], dt[..., None], A, B[..., None], C[..., None], D,
        None if z is None else z[..., None], dt_bias, dt_softplus, True, initial_state=state,
        delta_scale=delta_scale, a_scale=a_scale, delta_threshold=delta_threshold)
    return out[..., 0], new_state
