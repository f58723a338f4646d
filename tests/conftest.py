"""Shared test setup: one test suite for both machines.

With a CUDA GPU the kernels run natively at real sizes; without one they run on the CPU through
Triton's interpreter (TRITON_INTERPRET=1, set here before fusedscan is imported) at small sizes,
the interpreter patched to run the same numpy code with less Python (tests/interpreter_speed.py).
"""

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"

if not ON_GPU:
    from tests.interpreter_speed import patch_interpreter

    patch_interpreter()


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs per test, reproducible from the printed seed."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield


# Files whose tests take from half a minute to two minutes each in the interpreter. Collected
# first, so that pytest-xdist's workers start them early and end together on short tests
# (otherwise one worker ran them alone for the suite's last minutes).
_LONG_FILES = ("test_models.py", "test_docs.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in _LONG_FILES)
