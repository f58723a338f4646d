"""bench/ncu_stalls.py, which summarizes an Nsight Compute source-page export."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# An export as ncu writes it: the kernel's name first, then the header, then one row per SASS
# instruction (columns not read are left out; numbers may carry thousands separators).
EXPORT = '''"Kernel Name","bwd_main_kernel",
"Address","Source","Warp Stall Sampling (All Samples)","L2 Theoretical Sectors Global Excessive","L2 Theoretical Sectors Global","L2 Theoretical Sectors Local","stall_long_sb","stall_wait","stall_long_sb (Not Issued)"
"0x10","@P5   LDG.E R64, desc[UR30][R24.64]","10","44,000,000","48,000,000","0","0","10","0"
"0x20","FSEL R121, R121, RZ, !P4","1,200","0","0","0","1,100","100","900"
"0x30","FADD R125, R119, R120","790","0","0","2,000,000","600","190","500"
'''


def test_summary_shares_and_excess_sectors(tmp_path):
    path = tmp_path / "source.csv"
    path.write_text(EXPORT)
    done = subprocess.run([sys.executable, "bench/ncu_stalls.py", str(path), "--top", "2"],
                          cwd=ROOT, check=True, capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert lines[0] == f"== {path}"
    assert lines[1] == ("samples 2000; global L2 sectors 48.0M, of them excess 44.0M; "
                        "local 2.0M")
    # 1700 of 2000 samples are long scoreboard, 300 wait; "Not Issued" columns are not added.
    assert lines[2] == "stall reasons: long_sb 85.0%, wait 15.0%"
    assert lines[3] == "by opcode: FSEL 60.0%, FADD 39.5%"
    assert lines[5].split() == ["60.0%", "1100", "FSEL", "R121,", "R121,", "RZ,", "!P4"]
    assert lines[6].split()[:2] == ["39.5%", "600"]
    assert lines[7].startswith("accesses with the most excess")
    assert lines[8].split()[:3] == ["44.0", "@P5", "LDG.E"]
    assert len(lines) == 9
