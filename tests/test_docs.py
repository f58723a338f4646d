"""The code blocks of README.md, docs/methods.md and docs/models.md run as written, in order,
each document in a fresh Python process with the environment a reader has: TRITON_INTERPRET
unset (each document's first block sets it on a machine without a GPU, before fusedscan is
imported) and the repository importable. Checks of what the examples claim run after them in
the same process."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_doc(name, checks, tmp_path):
    """Runs the document's python blocks, then `checks`, as one script in tmp_path; returns the
    number of blocks."""
    path = os.path.join(ROOT, name)
    blocks = re.findall(r"```python\n(.*?)```", open(path, encoding="utf-8").read(), re.S)
    script = tmp_path / "doc.py"
    script.write_text("\n".join(blocks) + "\n" + checks, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, f"{name}:\n{result.stderr[-4000:]}"
    return len(blocks)


def test_readme_code_runs(tmp_path):
    pytest.importorskip("transformers")
    # The claims: the step's output has the scan's (batch, dim); a_scale got its gradient.
    checks = "assert y.shape == (b, d) and a_scale.grad.shape == (d,)\n"
    assert run_doc("README.md", checks, tmp_path) >= 4


def test_methods_doc_examples_run(tmp_path):
    # The examples' claims: the odd channels are the global ones; both searches end near 0.6.
    checks = ("assert calibration.global_channels('layer0').tolist() == [1, 3]\n"
              "assert abs(spsa.scales.item() - 0.6) < 0.05\n"
              "assert abs(grad.scales.item() - 0.6) < 0.05\n")
    assert run_doc("docs/methods.md", checks, tmp_path) >= 5


def test_models_doc_examples_run(tmp_path):
    pytest.importorskip("transformers")
    # The examples' claims: decimation kept T + 1 positions; LongMamba found global channels;
    # the search kept its bounds; the model ends unpatched.
    checks = ("assert logits.shape[1] == T + 1\n"
              "assert any(g > 0 for g, _ in calibration.summary().values())\n"
              "assert ((search.scales >= 0.2) & (search.scales <= 2.0)).all()\n"
              "assert '_fusedscan_patched' not in model.__dict__\n")
    assert run_doc("docs/models.md", checks, tmp_path) == 4
