"""Slow, plainly written PyTorch references that every fusedscan kernel is checked against, and
the tolerances of that check."""

from reference.selective_scan import delta_hat, selective_scan_ref
from reference.tolerances import LOW_PRECISION, forward_tolerance, grad_tolerance

__all__ = ["LOW_PRECISION", "delta_hat", "forward_tolerance", "grad_tolerance",
           "selective_scan_ref"]
