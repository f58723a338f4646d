"""mamba-ssm's CUDA selective scan, built from its PyPI source distribution, for side-by-side runs.

Nothing of mamba-ssm enters this repository: the archive, its extracted sources and the
compiled extension live in an ignored folder (default `.mamba-ssm/`).

Get the archive on a machine with registry access (it is ~0.2 MB):

    MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary :all: --no-build-isolation \\
        mamba-ssm==2.3.2.post1 -d .mamba-ssm

Build on the GPU machine (only the `selective_scan_cuda` extension, only for the local GPU's
architecture; about 2.5 minutes with 16 jobs on the H100 machine):

    python bench/mamba_ssm_cuda.py build

Then `load()` returns mamba-ssm's own `selective_scan_fn` (its Python wrapper, imported from
the extracted sources without running the package's __init__, which pulls in unrelated models).
"""

import argparse
import glob
import importlib
import os
import sys
import tarfile
import time
import types

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".mamba-ssm")
VERSION = "2.3.2.post1"
# nvcc flags of mamba-ssm's setup.py for this extension, plus the local architecture.
NVCC_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
              "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"]


class Unavailable(RuntimeError):
    pass


def _source_dir(root):
    src = os.path.join(root, f"mamba_ssm-{VERSION}")
    if not os.path.isdir(src):
        archive = os.path.join(root, f"mamba_ssm-{VERSION}.tar.gz")
        if not os.path.exists(archive):
            raise Unavailable(f"no {archive}: download it first (see bench/mamba_ssm_cuda.py)")
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    return src


def build(root=ROOT, jobs=16, verbose=False):
    """Compiles selective_scan_cuda for the local GPU into root/build; returns the module."""
    import torch
    from torch.utils.cpp_extension import load as load_extension

    if not torch.cuda.is_available():
        raise Unavailable("building mamba-ssm's selective_scan_cuda needs a CUDA GPU")
    src = _source_dir(root)
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    csrc = os.path.join(src, "csrc", "selective_scan")
    sources = [os.path.join(csrc, "selective_scan.cpp")] + sorted(
        glob.glob(os.path.join(csrc, "selective_scan_*.cu")))
    build_dir = os.path.join(root, "build")
    os.makedirs(build_dir, exist_ok=True)
    os.environ.setdefault("MAX_JOBS", str(jobs))
    t0 = time.time()
    module = load_extension(
        name="selective_scan_cuda", sources=sources, build_directory=build_dir,
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=NVCC_FLAGS + [f"-gencode=arch=compute_{arch},code=sm_{arch}"],
        extra_include_paths=[csrc], verbose=verbose)
    print(f"built selective_scan_cuda for sm_{arch} in {time.time() - t0:.0f} s", file=sys.stderr)
    return module


def load(root=ROOT):
    """mamba-ssm's selective_scan_fn, or raises Unavailable saying why."""
    try:
        import torch
    except ImportError as e:
        raise Unavailable("torch is not installed") from e
    if not torch.cuda.is_available():
        raise Unavailable("mamba-ssm's selective scan runs on CUDA only")
    build_dir = os.path.join(root, "build")
    if not glob.glob(os.path.join(build_dir, "selective_scan_cuda*.so")):
        raise Unavailable(f"selective_scan_cuda is not built in {build_dir}: "
                          "run `python bench/mamba_ssm_cuda.py build` on the GPU machine")
    sys.path.insert(0, build_dir)
    importlib.import_module("selective_scan_cuda")
    src = _source_dir(root)
    # Bare package objects, so that importing the interface module skips mamba_ssm/__init__.py.
    for name, sub in (("mamba_ssm", ""), ("mamba_ssm.ops", "ops")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [os.path.join(src, "mamba_ssm", sub)]
            sys.modules[name] = pkg
    return importlib.import_module("mamba_ssm.ops.selective_scan_interface").selective_scan_fn


def load_package(root=ROOT):
    """Makes the whole mamba_ssm package importable (its models too) from the extracted
    sources, with the built extension; raises Unavailable saying why not."""
    load(root)
    src = _source_dir(root)
    if src not in sys.path:
        sys.path.insert(0, src)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["build"])
    parser.add_argument("--root", default=ROOT, help="folder with the archive (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=16, help="parallel compile jobs")
    args = parser.parse_args()
    build(args.root, args.jobs, verbose=True)
