"""Training-free length-extension methods that drive the scan's keyword arguments."""

from fusedscan.methods.decimamba import DecimationSchedule, decimate, decimation_scores
from fusedscan.methods.longmamba import LongMambaCalibration, calibrate_longmamba
from fusedscan.methods.modulation import (
    ScaleSearch, calibrate_scales_gradient, calibrate_scales_spsa, scale_spectrum,
    spectrum_a_scale,
)

__all__ = ["DecimationSchedule", "LongMambaCalibration", "ScaleSearch", "calibrate_longmamba",
           "calibrate_scales_gradient", "calibrate_scales_spsa", "decimate", "decimation_scores",
           "scale_spectrum", "spectrum_a_scale"]
