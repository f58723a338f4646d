from fusedscan.selective_state_update.interface import selective_state_update_ext

__all__ = ["selective_state_update_ext"]
