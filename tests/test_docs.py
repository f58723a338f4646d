"""The code blocks of docs/methods.md and docs/models.md run as written, in order, in one
namespace per document."""

import os
import re

import pytest

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def run_doc(name):
    path = os.path.join(DOCS, name)
    blocks = re.findall(r"```python\n(.*?)```", open(path, encoding="utf-8").read(), re.S)
    namespace = {}
    for block in blocks:
        exec(compile(block, path, "exec"), namespace)
    return len(blocks), namespace


def test_methods_doc_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the LongMamba example writes a file
    count, namespace = run_doc("methods.md")
    assert count >= 5
    # The examples' claims: the odd channels are the global ones; both searches end near 0.6.
    assert namespace["calibration"].global_channels("layer0").tolist() == [1, 3]
    assert abs(namespace["spsa"].scales.item() - 0.6) < 0.05
    assert abs(namespace["grad"].scales.item() - 0.6) < 0.05


def test_models_doc_examples_run():
    pytest.importorskip("transformers")
    count, namespace = run_doc("models.md")
    assert count == 4
    # The examples' claims: decimation kept T + 1 positions; LongMamba found global channels;
    # the search kept its bounds; the model ends unpatched.
    assert namespace["logits"].shape[1] == namespace["T"] + 1
    assert any(g > 0 for g, _ in namespace["calibration"].summary().values())
    assert ((namespace["search"].scales >= 0.2) & (namespace["search"].scales <= 2.0)).all()
    assert "_fusedscan_patched" not in namespace["model"].__dict__
