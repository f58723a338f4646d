"""The code blocks of docs/methods.md run as written, in order, in one namespace."""

import os
import re

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "methods.md")


def test_methods_doc_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", open(DOC, encoding="utf-8").read(), re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)  # the LongMamba example writes a file
    namespace = {}
    for block in blocks:
        exec(compile(block, DOC, "exec"), namespace)
    # The examples' claims: the odd channels are the global ones; both searches end near 0.6.
    assert namespace["calibration"].global_channels("layer0").tolist() == [1, 3]
    assert abs(namespace["spsa"].scales.item() - 0.6) < 0.05
    assert abs(namespace["grad"].scales.item() - 0.6) < 0.05
