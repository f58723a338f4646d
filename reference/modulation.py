"""Reference for the spectrum scaling of Mamba Modulation and MambaExtend."""

import torch


def scale_spectrum_ref(A, s, form="power"):
    """power: −exp(s · A_log) with A_log = log(−A); linear: s · A. s float, (dim,) or (dim, N)."""
    if torch.is_tensor(s) and s.dim() == 1:
        s = s[:, None]
    if form == "power":
        return -torch.exp(s * torch.log(-A))
    return s * A
