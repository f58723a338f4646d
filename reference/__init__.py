"""Slow, plainly written PyTorch references that every fusedscan kernel is checked against."""

from reference.selective_scan import delta_hat, selective_scan_ref

__all__ = ["delta_hat", "selective_scan_ref"]
