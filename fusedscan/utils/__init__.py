"""Helpers shared by fusedscan's ops: argument checks (`checks`), devices (`device`), launch
arguments (`launch`), Triton device functions (`kernels`) and sums over a warp's lanes
(`warp_sums`)."""
