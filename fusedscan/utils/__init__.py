"""Helpers shared by fusedscan's ops: argument checks (`checks`), devices (`device`), launch
arguments (`launch`) and Triton device functions (`kernels`)."""
