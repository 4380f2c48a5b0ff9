"""scripts/bench.py end to end on the CPU at the smallest size: both pipelines (and the patch-embedding
variant) run the real PromptEmo step, in two rounds, and the output ends with the line other tools parse."""
from __future__ import annotations

import os
import re
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import bench  # noqa: E402


def test_bench_times_every_pipeline_and_ends_with_the_speedup_line(tmp_path, capsys):
    assert bench.main(["--backbone", "tiny", "--batch", "8", "--steps", "2", "--warmup", "1", "--workers", "0",
                       "--per-class", "3", "--image-size", "40", "--work-dir", str(tmp_path),
                       "--compare-patch-embed", "--repeats", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rates = {}
    for line in lines:
        row = re.match(r"\|\s*(dassl|fast|fast\+matmul)\s*\|\s*([\d,]+)\s*\|\s*[\d.]+\s*\|\s*([\d,]+)-([\d,]+)\s*\|", line)
        if row:
            median, low, high = (float(row.group(k).replace(",", "")) for k in (2, 3, 4))
            assert low <= median <= high  # the median of the two rounds lies in their range
            rates[row.group(1)] = median
    assert set(rates) == {"dassl", "fast", "fast+matmul"} and all(r > 0 for r in rates.values())
    assert re.fullmatch(r"speedup \d+\.\d\d", lines[-1])
    # the table rounds images/s to integers (a few per second on a busy machine), the speedup line to 0.01
    low = (rates["fast"] - 0.5) / (rates["dassl"] + 0.5)
    high = (rates["fast"] + 0.5) / max(rates["dassl"] - 0.5, 1e-9)
    assert low - 0.005 <= float(lines[-1].split()[1]) <= high + 0.005
