"""The output folder, driven through the command line as a user drives it: a finished run is never overwritten
by a run that fails or is refused, one run at a time per folder (the lock and its stale cases), leftovers of
killed writes removed, files written with the umask's mode."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from conftest import ROOT, SYNTH_OPTS
from engine import cli as train
from engine.utils.errors import UserError
from engine.utils.output_lock import LOCK_NAME, OutputLock, process_start_time

SYNTH_YAML = os.path.join(ROOT, "configs", "datasets", "synthetic.yaml")
COOP_TINY_YAML = os.path.join(ROOT, "configs", "trainers", "CoOp", "tiny.yaml")
ZS_TINY_YAML = os.path.join(ROOT, "configs", "trainers", "ZSCLIP", "tiny.yaml")
HOST = socket.gethostname()
UMASK = 0o002  # the fixture's run writes under this umask: group-writable files (0664), as on a lab server


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = train.cli([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def coop_argv(root: str, out, *extra) -> list:
    """CoOp with the tiny CLIP for one epoch: a trained run with checkpoints in a few seconds."""
    return ["--root", root, "--dataset-config-file", SYNTH_YAML, "--config-file", COOP_TINY_YAML, "--output-dir", out,
            "--seed", "1", "OPTIM.MAX_EPOCH", "1", *SYNTH_OPTS, *extra]


def zs_argv(root: str, out, *extra) -> list:
    """Zero-shot CLIP (tiny): nothing to train, evaluated in about a second."""
    return ["--root", root, "--dataset-config-file", SYNTH_YAML, "--config-file", ZS_TINY_YAML, "--output-dir", out,
            *SYNTH_OPTS, *extra]


def digest(folder) -> dict[str, str]:
    """Every file of ``folder`` but log.txt (which a refused run may append to) with a hash of its bytes."""
    found = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            if rel != "log.txt":
                found[rel] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_root):
    """A CoOp run trained for one epoch, written under umask 0o002; returns its folder."""
    out = tmp_path_factory.mktemp("finished") / "run"
    old = os.umask(UMASK)
    try:
        code = train.cli([str(a) for a in coop_argv(synthetic_root, out)])
    finally:
        os.umask(old)
    assert code == 0
    assert (out / "results.json").is_file() and checkpoint_files(out)
    return out


def checkpoint_files(run) -> list[str]:
    """The checkpoint files and indexes of every model of ``run`` (``<model>/model.pth.tar-1``...), relative."""
    return sorted(os.path.relpath(os.path.join(d, f), run) for d, _, files in os.walk(run) for f in files
                  if f.startswith("model.pth.tar-") or f == "checkpoint")


# ------------------------------------------------------------------------------------- the umask's modes
def test_outputs_get_the_umasks_mode(finished_run):
    """(Before the tests that run again into the folder, under the test's own umask.)"""
    expected = 0o666 & ~UMASK
    files = ["config.yaml", "splits.json", "results.json", "log.txt", "metrics.jsonl", *checkpoint_files(finished_run)]
    for rel in files:
        mode = stat.S_IMODE(os.stat(finished_run / rel).st_mode)
        assert mode == expected, f"{rel}: {oct(mode)}, expected {oct(expected)}"


# ------------------------------------------------------------------ a finished run is never overwritten
REFUSED_RERUNS = [
    # (extra argv on the finished run's command, fragment of the one-line error)
    (["DATASET.UNSEEN_CLASSES", "anger"], "belongs to a different run"),
    (["--eval-only", "--model-dir", "{run}", "--load-epoch", "5"], "holds a trained run"),
    (["--eval-only", "--model-dir", "{run}"], "holds a trained run"),
    (["INPUT.TRANSFORMS", "['random_flip', 'no_such_transform']"], "unknown transform(s) no_such_transform"),
    (["OPTIM.MAX_EPOCH", "-2"], "OPTIM.MAX_EPOCH must be an integer >= 0, got -2"),
    (["OPTIM.MAX_EPOCH", "0"], "holds a run trained for 1 epochs, more than OPTIM.MAX_EPOCH 0"),
]


@pytest.mark.parametrize("extra, message", REFUSED_RERUNS, ids=[m for _, m in REFUSED_RERUNS])
def test_a_refused_run_leaves_a_finished_runs_folder_as_it_was(finished_run, synthetic_root, capsys, extra, message):
    before = digest(finished_run)
    code, _, err = _cli(capsys, *coop_argv(synthetic_root, finished_run, *[a.format(run=finished_run) for a in extra]))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert digest(finished_run) == before  # config.yaml, splits.json, results.json, checkpoints, metrics.jsonl


def test_the_same_command_again_evaluates_the_finished_run_unchanged(finished_run, synthetic_root, capsys):
    results = (finished_run / "results.json").read_bytes()
    code, _, err = _cli(capsys, *coop_argv(synthetic_root, finished_run))
    assert code == 0, err
    assert (finished_run / "results.json").read_bytes() == results
    assert "Loaded" in (finished_run / "log.txt").read_text()


# ------------------------------------------------------------------------------ leftovers of killed writes
def test_leftovers_of_killed_writes_are_removed_by_the_next_run(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    dead = dead_pid()
    leftovers = [out / "model" / f".model.pth.tar-3.{dead}@{HOST}.tmp",  # a checkpoint write killed on this host
                 out / f".results.json.{dead}@{HOST}.tmp",
                 out / "model" / ".model.pth.tar-2.k3j_9x0q.tmp",  # as tempfile.mkstemp named them before
                 out / "model" / f".model.pth.tar-4.{dead}@another-node.tmp"]  # a run of another host, now gone
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    live = out / "model" / f".model.pth.tar-5.{os.getppid()}@{HOST}.tmp"  # a live process's: not ours to remove
    live.write_bytes(b"being written")
    code, _, err = _cli(capsys, *zs_argv(synthetic_root, out))
    assert code == 0, err
    assert not any(path.exists() for path in leftovers) and live.exists()
    log = (out / "log.txt").read_text()
    assert "Removed 4 temporary file(s) of interrupted writes" in log and str(leftovers[0]) in log


# ------------------------------------------------------------------------------------------------ the lock
def write_lock(folder, pid: int, host: str, process_start: int | None = None, age_s: float = 0.0,
               pid_namespace: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host, "started": "2025-01-02 03:04:05",
                                "process_start": process_start, "pid_namespace": pid_namespace}))
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_first(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(["sleep", "60"])  # the first run, alive on this host
    try:
        write_lock(out, first.pid, HOST, process_start_time(first.pid))
        code, _, err = _cli(capsys, *zs_argv(synthetic_root, out))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert f"output folder {out} is in use by pid {first.pid} on host {HOST} (started 2025-01-02 03:04:05)" \
            in lines[0]
        assert sorted(os.listdir(out)) == [LOCK_NAME]  # nothing written: no log.txt interleaved, no results
    finally:
        first.kill()
        first.wait()
    # killed: its lock is stale and the next run takes it over, saying so in its log
    code, _, err = _cli(capsys, *zs_argv(synthetic_root, out))
    assert code == 0, err
    assert f"removed a stale lock of pid {first.pid} on host {HOST}" in (out / "log.txt").read_text()
    assert not (out / LOCK_NAME).exists()  # released at the end


@pytest.mark.parametrize("case", ["dead pid", "pid reused", "other host, silent"])
def test_a_stale_lock_does_not_block_the_next_run(synthetic_root, tmp_path, capsys, case):
    out = tmp_path / "run"
    if case == "dead pid":
        write_lock(out, dead_pid(), HOST, None)
        why = "no longer runs on this host"
    elif case == "pid reused":  # the pid runs, but it is another process than the one that took the lock
        write_lock(out, os.getppid(), HOST, (process_start_time(os.getppid()) or 0) + 1)
        why = "now belongs to another process"
    else:
        write_lock(out, 4242, "another-node", None, age_s=601)
        why = "not touched for"
    code, _, err = _cli(capsys, *zs_argv(synthetic_root, out))
    assert code == 0, err
    log = (out / "log.txt").read_text()
    assert "removed a stale lock of pid" in log and why in log


def test_a_lock_of_another_host_is_live_while_its_heartbeat_is(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    write_lock(out, 4242, "another-node", None, age_s=30)
    code, _, err = _cli(capsys, *zs_argv(synthetic_root, out))
    assert code == 2 and "is in use by pid 4242 on host another-node" in err
    # a container of this host name with pids of its own: its pid means nothing here, so the heartbeat decides
    write_lock(tmp_path / "container", dead_pid(), HOST, None, age_s=30, pid_namespace="pid:[1]")
    code, _, err = _cli(capsys, *zs_argv(synthetic_root, tmp_path / "container"))
    assert code == 2 and "is in use by pid" in err and f"on host {HOST}" in err
    # with a shorter timeout (OUTPUT_LOCK_STALE_S), the same lock is stale
    code, _, err = _cli(capsys, *zs_argv(synthetic_root, out, "OUTPUT_LOCK_STALE_S", "20"))
    assert code == 0, err


def test_the_lock_is_kept_alive_while_held_and_removed_when_released(tmp_path):
    lock = OutputLock.acquire(str(tmp_path), stale_after_s=0.4)
    path = tmp_path / LOCK_NAME
    try:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        old = time.time() - 100
        os.utime(path, (old, old))
        time.sleep(0.5)  # a heartbeat every 0.1 s
        assert time.time() - path.stat().st_mtime < 1
        with pytest.raises(UserError, match=f"in use by pid {os.getpid()} on host {HOST}"):
            OutputLock.acquire(str(tmp_path), stale_after_s=0.4)  # a live process of this host: never stale
    finally:
        lock.release()
    assert not path.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("stale_first", [False, True])
def test_runs_starting_together_get_one_lock(tmp_path, stale_first):
    """Eight takers at once (threads standing in for processes), on a free folder or one with a stale lock:
    exactly one holds the lock afterwards, the others are refused naming it."""
    import threading

    if stale_first:
        write_lock(tmp_path, dead_pid(), HOST)
    start, results = threading.Barrier(8), []

    def take():
        start.wait()
        try:
            results.append(OutputLock.acquire(str(tmp_path), stale_after_s=600))
        except UserError as e:
            results.append(e)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    locks = [r for r in results if isinstance(r, OutputLock)]
    try:
        assert len(locks) == 1 and len(results) == 8
        assert all("is in use by pid" in str(r) for r in results if isinstance(r, UserError))
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        for lock in locks:
            lock.release()
    assert os.listdir(tmp_path) == []  # no probe or renamed lock left behind


def test_sigterm_stops_a_run_and_releases_its_lock(synthetic_root, tmp_path):
    """A scheduler's SIGTERM (time limit, pre-emption, scancel) ends train.py as Ctrl-C does: exit 130, the lock
    removed (it used to die on the spot and leave its lock), checkpoints as they were."""
    import signal

    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *map(str, coop_argv(synthetic_root, out)),
           "OPTIM.MAX_EPOCH", "50", "TRAIN.PRINT_FREQ", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    log, deadline = out / "log.txt", time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (log.exists() and "epoch [1/50]" in log.read_text()):
        time.sleep(0.05)
    assert (out / LOCK_NAME).exists(), "the run did not start"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    assert not (out / LOCK_NAME).exists() and not (out / "results.json").exists()
