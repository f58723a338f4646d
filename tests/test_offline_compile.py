"""bench/offline_compile.py, which compiles the kernels for a GPU on a machine without one."""

import csv
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_offline_compile_reports_the_launches_kernels(tmp_path):
    # The kernels are compiled, not interpreted: the subprocess runs without TRITON_INTERPRET.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = tmp_path / "kernels.csv"
    subprocess.run([sys.executable, "bench/offline_compile.py", "--dtypes", "float32",
                    "--shapes", "2x64x300", "--kernels", "sums", "--csv", str(path)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [row["kernel"] for row in rows] == ["bwd_sums_kernel"]
    row = rows[0]
    # The sums kernel adds float32 partial sums: its SASS has float adds and global loads.
    assert 0 < int(row["registers"]) <= 255
    assert int(row["FADD"]) > 0 and int(row["LDG"]) > 0 and int(row["sass"]) > int(row["FADD"])
