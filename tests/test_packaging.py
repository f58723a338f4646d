"""What an install of fusedscan puts on a user's path: the repository's reference/ folder goes in
as fusedscan.reference, not as a top-level package named `reference` (issue 17, item 8)."""

import os
import subprocess
import sys

import pytest

import reference
from fusedscan.__main__ import reference as main_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import importlib.util, os
import fusedscan
print(os.path.dirname(os.path.dirname(os.path.abspath(fusedscan.__file__))))
try:
    from fusedscan.reference import selective_scan_ref
    print(selective_scan_ref.__module__)
except ModuleNotFoundError:
    print("missing")
print(importlib.util.find_spec("reference") is not None)
"""


def test_install_puts_the_references_inside_fusedscan(tmp_path):
    """From a directory outside the repository, with the repository taken off the path:
    fusedscan as installed (pip install -e, as CI installs it) has fusedscan.reference, and no
    top-level `reference` is importable. Skips where this checkout is not the installed
    fusedscan (a checkout used through PYTHONPATH, another install)."""
    path = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in path if p and os.path.realpath(p) != os.path.realpath(ROOT)))
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    if "No module named 'fusedscan'" in probe.stderr:
        pytest.skip("fusedscan is not installed: this checkout is used through PYTHONPATH")
    assert probe.returncode == 0, probe.stderr
    where, module, top_level = probe.stdout.split()
    if os.path.realpath(where) != os.path.realpath(ROOT):
        pytest.skip(f"the installed fusedscan is another checkout's ({where})")
    assert module == "fusedscan.reference.selective_scan"
    assert top_level == "False", "an install must not put a package named `reference` on the path"


def test_main_job_finds_the_references_in_a_checkout():
    """python -m fusedscan takes the references from fusedscan.reference where installed and
    from the repository's folder in a checkout on PYTHONPATH: the same code either way."""
    found = main_reference()
    assert found.__name__ in ("fusedscan.reference", "reference")
    assert found.selective_scan_ref.__code__.co_code == reference.selective_scan_ref.__code__.co_code
