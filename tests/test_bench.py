"""scripts/bench.py end to end on the CPU at the smallest size: both pipelines (and the patch-embedding
variant) run the real PromptEmo step, in two rounds, and the output ends with the line other tools parse."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, load_script

bench = load_script("bench")


def test_bench_times_every_pipeline_and_ends_with_the_speedup_line(tmp_path, capsys):
    figures = tmp_path / "figures" / "bench.json"
    assert bench.main(["--backbone", "tiny", "--batch", "8", "--steps", "2", "--warmup", "1", "--workers", "0",
                       "--per-class", "3", "--image-size", "40", "--work-dir", str(tmp_path),
                       "--compare-patch-embed", "--repeats", "2", "--json", str(figures)]) == 0
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
    # the same medians for other tools (protocol.py --estimate --bench), with what was measured
    written = json.loads(figures.read_text())
    assert set(written["images_per_s"]) == set(rates)
    assert all(written["images_per_s"][k] == pytest.approx(rates[k], abs=0.55) for k in rates)  # table: integers
    assert (written["backbone"], written["batch"], written["image_size"]) == ("tiny", 8, 40)
    assert set(written["ms_per_step"]) == set(rates) and written["device"].startswith(("CPU", "NVIDIA"))


def test_a_failing_optional_pipeline_is_reported_and_the_others_still_timed(tmp_path, capsys, monkeypatch):
    real_measure = bench.measure

    def measure(trainer, warmup, steps):  # the patch-embedding variant breaks when it runs
        if trainer.cfg.MODEL.PATCH_EMBED_MATMUL:
            raise RuntimeError("accessing tensor output of CUDAGraphs that has been overwritten\nsecond line")
        return real_measure(trainer, warmup, steps)

    monkeypatch.setattr(bench, "measure", measure)
    args = ["--backbone", "tiny", "--batch", "8", "--steps", "1", "--warmup", "0", "--workers", "0", "--per-class", "3",
            "--image-size", "40", "--work-dir", str(tmp_path), "--compare-patch-embed", "--repeats", "2"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("fast+matmul: run failed (RuntimeError: accessing tensor output of CUDAGraphs that has been "
                     "overwritten); left out") == 1  # once: not tried again in the second round
    assert "round 2/2: dassl" in out and "fast+matmul" not in out.split("left out")[1]
    assert "patch embedding as matmul" not in out and re.search(r"^speedup \d+\.\d\d$", out.strip(), re.M)

    def broken(trainer, warmup, steps):  # a failure of a required pipeline is not swallowed
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(bench, "measure", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        bench.main(args)


def test_cuda_graphs_row_needs_a_gpu_and_compile():
    args = bench.argparse.Namespace(compare_patch_embed=True, cuda_graphs=True, no_compile=False)
    names = [name for name, _, _ in bench.pipelines(args)]
    if torch.cuda.is_available():
        assert names[-1] == "fast+matmul+graphs"
        assert bench.pipelines(args)[-1][2] == ["MODEL.PATCH_EMBED_MATMUL", "True", "MODEL.COMPILE_MODE",
                                                "reduce-overhead"]
    else:
        assert names == ["dassl", "fast", "fast+matmul"]
    args.no_compile = True
    assert [name for name, _, _ in bench.pipelines(args)] == ["dassl", "fast", "fast+matmul"]


def test_compile_summary_counts_graphs_and_breaks(compile_with):
    counters = compile_with("aot_eager")
    assert bench.compile_summary() is None  # nothing compiled yet

    def with_a_break(x):
        y = x.sin()
        print("host code in the middle")  # dynamo cannot trace a print: the graph breaks here
        return y.cos()

    torch.compile(with_a_break)(torch.ones(3))
    assert counters["stats"]["unique_graphs"] == 2
    assert bench.compile_summary().startswith("torch.compile: 2 graphs, 1 graph breaks (first: ")


def test_host_ops_counts_every_part_of_the_step(tmp_path):
    # run as a user runs it, from another folder: the script reaches its sibling bench.py and the packages
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "host_ops.py"), "--backbone", "tiny",
                           "--batch", "8", "--work-dir", str(tmp_path / "work")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[3].isdigit():
            rows[cells[0]] = (int(cells[1]), int(cells[2] or 0), int(cells[3]))
    parts = ["data (source + target batch)", "image encoder", "text encoder (positive prompts)", "losses",
             "optimiser update"]
    assert set(rows) == set(parts) | {"whole step (without data)"}
    assert all(rows[p][0] > 0 for p in parts)
    # gradients reach the prompts through the text encoder, and the image encoder through the losses
    assert rows["text encoder (positive prompts)"][1] > 0 and rows["image encoder"][1] > 0 and rows["losses"][1] > 0
    # the parts, counted one by one, are what the whole step dispatches (give or take its glue)
    inside = sum(rows[p][2] for p in parts[1:])
    assert inside <= rows["whole step (without data)"][2] <= inside + 50


def test_profile_summary_groups_kernels_by_kind_per_step():
    from types import SimpleNamespace as Event

    events = [Event(key="nvjet_tst_128x256_h_bz_coopA_NNT", self_device_time_total=6000.0, count=30),
              Event(key="void pytorch_flash::flash_bwd_kernel<...>", self_device_time_total=1500.0, count=6),
              Event(key="triton_per_fused_native_layer_norm_0", self_device_time_total=900.0, count=60),
              Event(key="triton_poi_fused_add_1", self_device_time_total=300.0, count=90),
              Event(key="void at::native::vectorized_elementwise_kernel<4, ...>", self_device_time_total=300.0,
                    count=150),
              Event(key="Memcpy DtoD (Device -> Device)", self_device_time_total=0.0, count=3)]
    rows, gpu_ms = bench.kernel_summary(events, steps=3)
    assert gpu_ms == 3.0  # 9000 us over 3 steps
    by_kind = {row[0]: row[1:] for row in rows}
    assert by_kind["matrix products"] == ["2.00", "67%", "10"]
    assert by_kind["attention"] == ["0.50", "17%", "2"]
    assert by_kind["compiled (Triton)"] == ["0.40", "13%", "50"]
    assert by_kind["other ATen kernels"] == ["0.10", "3%", "50"]
    assert by_kind["memory copies"] == ["0.00", "0%", "1"]
    assert [row[0] for row in rows][:2] == ["matrix products", "attention"]  # costliest first
    assert bench.kernel_kind("sm90_xmma_wgrad_implicit_gemm_indexed_wo_smem_f32") == "convolution (cuDNN)"
    assert bench.kernel_kind("void multi_tensor_apply_kernel<...FusedAdamMathFunctor...>") == "optimiser"
