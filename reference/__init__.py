"""Slow, plainly written PyTorch references that every fusedscan kernel is checked against, and
the tolerances of that check."""

from .decimamba import (
    decimate_from_scores_ref, decimation_scores_ref, schedule_num_kept_ref,
)
from .inputs import make_bc, scan_inputs, thresholds_between_values
from .longmamba import (
    channel_decay_ref, channel_threshold_ref, clamped_row_ref, global_channels_ref,
)
from .modulation import scale_spectrum_ref
from .selective_scan import delta_hat, selective_scan_ref
from .state_update import selective_state_update_ref
from .tolerances import LOW_PRECISION, forward_tolerance, grad_tolerance

__all__ = ["LOW_PRECISION", "channel_decay_ref", "channel_threshold_ref", "clamped_row_ref",
           "decimate_from_scores_ref", "decimation_scores_ref", "delta_hat", "forward_tolerance",
           "global_channels_ref", "grad_tolerance", "make_bc", "scale_spectrum_ref", "scan_inputs",
           "schedule_num_kept_ref", "selective_scan_ref", "selective_state_update_ref",
           "thresholds_between_values"]
