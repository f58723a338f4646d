"""fusedscan: fused Triton kernels for Mamba's selective scan, with length extension built in."""

from fusedscan.selective_scan import selective_scan_ext

__version__ = "0.1.0"
__all__ = ["selective_scan_ext"]
