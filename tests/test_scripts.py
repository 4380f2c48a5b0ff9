"""The protocol scripts: the output layout, skipping finished runs, and clear errors."""
from __future__ import annotations

import os
import re
import subprocess

from conftest import ROOT, SYNTH_OPTS, load_script
from engine.trainer import TRAINER_REGISTRY


def _run_script(script: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", script), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TQDM_DISABLE": "1", **env})


def test_promptemo_script_runs_each_seed_once_into_the_protocol_layout(synthetic_root, tmp_path):
    env = {"DATA": synthetic_root, "OUT": str(tmp_path / "mofer"), "SEEDS": "1",
           "DOMAINS": "synth_color synth_gray synth_lab synth_wild", "DATASET_CONFIG": "configs/datasets/synthetic.yaml",
           "CONFIG": "configs/trainers/PromptEmo/tiny.yaml"}
    args = ["synth_wild", "fear", "OPTIM.MAX_EPOCH", "1", *SYNTH_OPTS]
    first = _run_script("promptemo.sh", args, env)
    assert first.returncode == 0, first.stderr[-2000:]
    result = tmp_path / "mofer" / "synth_wild" / "fear" / "PromptEmo" / "seed1" / "results.json"
    assert result.is_file()
    assert "--source-domains synth_color synth_gray synth_lab" in open(result.parent / "log.txt").read()
    again = _run_script("promptemo.sh", args, env)
    assert again.returncode == 0 and "skip" in again.stdout


def test_promptemo_script_errors(tmp_path):
    bad = _run_script("promptemo.sh", ["nowhere", "fear"], {"OUT": str(tmp_path)})
    assert bad.returncode == 2 and "target 'nowhere' is not one of the domains" in bad.stderr
    usage = _run_script("promptemo.sh", ["rafdb"], {})
    assert usage.returncode == 2 and "usage:" in usage.stderr
    missing = _run_script("promptemo.sh", ["rafdb", "fear"], {"OUT": str(tmp_path), "SEEDS": "1",
                                                              "DATA": str(tmp_path)})
    assert missing.returncode == 2
    assert "dataset 'ferplus' (FERPlus) not found: expected the folder" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_protocol_dry_run_lists_every_unfinished_run_once(tmp_path, capsys):
    protocol = load_script("protocol")
    out = tmp_path / "mofer"
    done = out / "rafdb" / "fear" / "CoOp" / "seed2"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    assert protocol.main(["--dry-run", "--out", str(out), "--python", "python"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 * 7 * 3 * 9 - 1  # targets x classes x seeds x methods, minus the finished run
    # each method with its config of the original's settings (--variant paper, the default)
    configs = {line.split("--trainer ")[1].split()[0]: line.split("--config-file ")[1].split()[0] for line in lines}
    assert {m: os.path.basename(c) for m, c in configs.items()} == {
        "PromptEmo": "vit_b32.yaml", "Baseline": "vit_b32.yaml", "CoOp": "vit_b32.yaml", "ZSCLIP": "vit_b32.yaml",
        "DUML": "resnet34.yaml", "LACMFER": "resnet18.yaml", "LACMFERCLIP": "resnet18.yaml", "NENO": "vit_s16.yaml",
        "OSFER": "resnet18.yaml"}
    first = lines[0].split()
    assert first[:2] == ["python", os.path.relpath(os.path.join(ROOT, "train.py"))]
    assert "--source-domains ferplus affectnet oulu --target-domains rafdb" in lines[0]
    assert not any(str(done) + " " in line + " " for line in lines)
    assert protocol.main(["--dry-run", "--targets", "mars"]) == 2
    assert "target 'mars' is not one of the domains" in capsys.readouterr().err


def test_the_demo_runs_every_registered_trainer_once():
    # scripts/demo.sh lists its methods in its lanes; a newly registered trainer must join one, with the
    # configs of both of the demo's variants.
    with open(os.path.join(ROOT, "scripts", "demo.sh"), encoding="utf-8") as f:
        lanes = re.findall(r"^LANE_\d+=\((.*)\)$", f.read(), re.M)
    methods = [method for lane in lanes for method in lane.split()]
    # the project's trainers (tests register subclasses of their own in the same registry)
    registered = sorted(name for name, cls in TRAINER_REGISTRY if cls.__module__.startswith("trainers."))
    assert len(lanes) == 2 and sorted(methods) == registered
    for method in methods:
        for variant in ("tiny_pretrained", "tiny"):
            config = os.path.join(ROOT, "configs", "trainers", method, f"{variant}.yaml")
            assert os.path.isfile(config), config
