from fusedscan.selective_scan.interface import selective_scan_ext

__all__ = ["selective_scan_ext"]
