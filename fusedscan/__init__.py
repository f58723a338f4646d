"""fusedscan: fused Triton kernels for Mamba's selective scan, with length extension built in."""

from fusedscan.methods import (
    DecimationSchedule, LongMambaCalibration, ScaleSearch, calibrate_longmamba,
    calibrate_scales_gradient, calibrate_scales_spsa, decimate, decimation_scores, scale_spectrum,
    spectrum_a_scale,
)
from fusedscan.models import (
    DeciMamba, DeltaRecorder, LongMamba, MambaExtend, Modulation, apply_fusedscan, kept_positions,
    record_delta_hats, remove_fusedscan,
)
from fusedscan.selective_scan import selective_scan_ext
from fusedscan.selective_state_update import selective_state_update_ext

__version__ = "0.1.0"
__all__ = ["DeciMamba", "DecimationSchedule", "DeltaRecorder", "LongMamba", "LongMambaCalibration",
           "MambaExtend", "Modulation", "ScaleSearch", "apply_fusedscan", "calibrate_longmamba",
           "calibrate_scales_gradient", "calibrate_scales_spsa", "decimate", "decimation_scores",
           "kept_positions", "record_delta_hats", "remove_fusedscan", "scale_spectrum",
           "selective_scan_ext", "selective_state_update_ext", "spectrum_a_scale"]
