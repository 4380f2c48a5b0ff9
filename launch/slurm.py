"""The protocol on a Slurm cluster through submitit (``pip install -e .[slurm]``).

One job per unfinished run (or one job array, ``array=True``), each with the resources of one run. The
submitted jobs are recorded in ``<out>/slurm/jobs.json`` (run folder -> job id, attempts), beside the
outputs; submitit's own files (sbatch script, pickles, the job's stdout/stderr) go to
``<out>/slurm/logs/<job id>/`` and the run's console output to ``<run>/console.log``, as on one machine.

The command is idempotent: run it again and
- a run with ``results.json`` is finished and skipped;
- a run whose recorded job is still queued or running (``squeue``) is left alone, never submitted twice;
- a run whose job ended without ``results.json`` failed: it is submitted again (train.py resumes from its
  last checkpoint), up to ``max_attempts`` submissions in all, after which it is reported and left.

With ``wait`` the command then polls the jobs until none is queued or running, prints the progress line
and exits 1 if any run failed; without it, it exits after submitting (re-run it later to collect).

``cluster="local"`` uses submitit's local executor instead of Slurm: the same submission, record and
collection, with the jobs as background processes of this machine (tests, and trying a setup without a
cluster). submitit is imported only here, when a cluster launcher is used.
"""
from __future__ import annotations

import contextlib
import datetime
import getpass
import io
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from engine.utils.errors import UserError
from engine.utils.processes import pid_alive
from launch.pool import Console, Progress
from launch.runs import Run, run_logged

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_DIR = "slurm"
RECORD_FILE = "jobs.json"
CLUSTERS = ("slurm", "local")


@dataclass
class ClusterSettings:
    """The resources of one run and how to submit (``--partition --time --gpus-per-run ...``)."""

    cluster: str = "slurm"
    time_min: int = 60
    gpus_per_run: int = 1
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    partition: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # any other sbatch option, KEY=VALUE
    array: bool = False
    array_parallelism: int | None = None
    wait: bool = False
    poll_s: float = 60.0
    max_attempts: int = 3


def parse_time(text: str) -> int:
    """``--time`` as minutes: ``H:MM``, ``H:MM:SS``, ``D-H:MM`` or plain minutes (Slurm's forms)."""
    try:
        days, _, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        if len(parts) == 1:
            minutes = parts[0]
        elif len(parts) in (2, 3):
            minutes = parts[0] * 60 + parts[1] + (1 if len(parts) == 3 and parts[2] else 0)
        else:
            raise ValueError
        minutes += int(days) * 1440 if days else 0
    except ValueError:
        raise UserError(f"--time takes H:MM (or minutes, H:MM:SS, D-H:MM), got '{text}'") from None
    if minutes <= 0:
        raise UserError(f"--time must be positive, got '{text}'")
    return minutes


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    """``--slurm-option KEY=VALUE`` pairs (sbatch's long option names, ``account=abc``)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm-option takes KEY=VALUE (an sbatch option, e.g. account=myproject), got '{pair}'")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("the cluster launcher needs submitit: pip install -e .[slurm]") from None
    return submitit


class JobRecord:
    """``<out>/slurm/jobs.json``: for each run (its folder relative to ``out``) the last job submitted for
    it, when, and how many times it was submitted. Written atomically after every submission."""

    def __init__(self, out_root: str) -> None:
        self.out_root = out_root
        self.path = os.path.join(out_root, RECORD_DIR, RECORD_FILE)
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        if os.path.isfile(self.path):
            try:
                with open(self.path) as f:
                    self.entries = json.load(f)
            except (OSError, ValueError) as e:
                raise UserError(f"the job record {self.path} is unreadable ({e}); move it away to start afresh, "
                                f"after checking that none of its jobs still runs (squeue)") from None

    def key(self, run: Run) -> str:
        return os.path.relpath(run.out, self.out_root)

    def get(self, run: Run) -> dict[str, Any] | None:
        return self.entries.get(self.key(run))

    def add(self, run: Run, job_id: str) -> None:
        previous = self.get(run) or {}
        self.entries[self.key(run)] = {"job_id": job_id, "attempts": previous.get("attempts", 0) + 1,
                                       "submitted": datetime.datetime.now().isoformat(timespec="seconds")}
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.entries, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
        self.changed = False


def _pid_alive(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it if it has ended (no zombie)
        return reaped == 0
    except ChildProcessError:
        pass
    return pid_alive(pid)


def active_jobs(cluster: str, job_ids: Sequence[str], log_root: str) -> dict[str, str]:
    """``{job id: state}`` of the jobs of ``job_ids`` that are still queued or running. Slurm: what
    ``squeue`` lists for this user (PENDING, RUNNING, COMPLETING...); local: controller processes alive
    that have written no result yet."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    if cluster == "local":
        return {j: "RUNNING" for j in wanted if j.isdigit() and _pid_alive(int(j))
                and not os.path.exists(os.path.join(log_root, j, f"{j}_0_result.pkl"))}
    try:
        listed = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"], capture_output=True,
                                text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"squeue failed ({e}): cannot tell which jobs still run, so nothing is submitted") from None
    if listed.returncode:
        raise UserError(f"squeue failed ({listed.stderr.strip()[:300]}): cannot tell which jobs still run, so "
                        f"nothing is submitted")
    states = dict(line.split("|", 1) for line in listed.stdout.splitlines() if "|" in line)
    return {j: states[j] for j in wanted if j in states}


def _executor(settings: ClusterSettings, log_root: str):
    submitit = import_submitit()
    executor = submitit.AutoExecutor(folder=os.path.join(log_root, "%j"), cluster=settings.cluster)
    # the job unpickles launch.runs.run_logged: this checkout first on its path, installed or not
    path_setup = f"export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}"
    params: dict[str, Any] = {"timeout_min": settings.time_min, "tasks_per_node": 1, "nodes": 1, "name": "protocol",
                              f"{settings.cluster}_setup": [path_setup]}
    if settings.gpus_per_run:
        params["gpus_per_node"] = settings.gpus_per_run
    if settings.cpus_per_run:
        params["cpus_per_task"] = settings.cpus_per_run
    if settings.mem_gb:
        params["mem_gb"] = settings.mem_gb
    if settings.cluster == "slurm":
        known = set(submitit.SlurmExecutor._valid_parameters())
        if settings.partition:
            params["slurm_partition"] = settings.partition
        if settings.array_parallelism:
            params["slurm_array_parallelism"] = settings.array_parallelism
        extra = {k: v for k, v in settings.options.items() if k not in known}
        params.update({f"slurm_{k}": v for k, v in settings.options.items() if k in known})
        if extra:
            params["slurm_additional_parameters"] = extra
    try:
        executor.update_parameters(**params)
    except ValueError as e:
        raise UserError(f"submitit refused the job's parameters: {str(e).splitlines()[0]}") from None
    return executor


def _submit(executor, runs: Sequence[Run], settings: ClusterSettings, record: JobRecord, console: Console) -> None:
    """Submit ``runs`` (one job each, or one array), recording and printing every job id as it is known."""
    nproc = settings.gpus_per_run if settings.gpus_per_run > 1 else 1
    cwd = os.getcwd()

    def note(run: Run, job) -> None:
        record.add(run, str(job.job_id))
        attempts = record.get(run)["attempts"]
        console.event(f"submit {run.out} (job {job.job_id}{f', attempt {attempts}' if attempts > 1 else ''})")

    try:
        # submitit prints sbatch's complaints before raising them; the one error line below carries them
        with contextlib.redirect_stderr(io.StringIO()):
            if settings.array and len(runs) > 1:
                with executor.batch():
                    jobs = [executor.submit(run_logged, run, nproc, cwd) for run in runs]
                for run, job in zip(runs, jobs):
                    note(run, job)
            else:
                for run in runs:
                    executor.update_parameters(name=f"protocol-{record.key(run).replace(os.sep, '-')}")
                    note(run, executor.submit(run_logged, run, nproc, cwd))
                    record.save()
    except UserError:
        raise
    except Exception as e:  # sbatch's refusal arrives as submitit's FailedJobError, with sbatch's stderr
        raise UserError(f"submission failed: {' '.join(str(e).split())[:400]}") from None
    finally:
        record.save()


def run_on_cluster(runs: Sequence[Run], out_root: str, settings: ClusterSettings, done_before: int = 0,
                   console: Console | None = None) -> int:
    """Submit the unfinished ``runs`` that have no job queued or running; with ``settings.wait``, wait for
    every job and report. Returns 0, 1 when a run failed (for good, or while waiting), 130 when Ctrl-C
    stopped the waiting (the jobs go on)."""
    console = console or Console()
    record = JobRecord(out_root)
    log_root = os.path.join(out_root, RECORD_DIR, "logs")
    recorded = {r.out: e["job_id"] for r in runs if (e := record.get(r))}
    active = active_jobs(settings.cluster, list(recorded.values()), log_root)
    to_submit, given_up = [], []
    for run in runs:
        entry = record.get(run)
        if entry is None:
            to_submit.append(run)
        elif entry["job_id"] in active:
            console.event(f"active {run.out} (job {entry['job_id']}, {active[entry['job_id']]}): not submitted again")
        elif entry["attempts"] >= settings.max_attempts:
            given_up.append(run)
            console.event(f"failed {run.out} (job {entry['job_id']}, {entry['attempts']} attempt(s); log "
                          f"{run.console_log}): not submitted again, --max-attempts allows more")
        else:
            console.event(f"failed {run.out} (job {entry['job_id']} ended without results.json; log "
                          f"{run.console_log}): submitted again")
            to_submit.append(run)
    if to_submit:
        _submit(_executor(settings, log_root), to_submit, settings, record, console)
    waiting = len(runs) - len(to_submit) - len(given_up)
    console.event(f"{settings.cluster}: {len(to_submit)} submitted, {waiting} already queued or running, "
                  f"{len(given_up)} failed for good; job record {record.path}")
    if not settings.wait:
        console.event("re-run this command to collect finished runs and resubmit failed ones (or add --wait)")
        return 1 if given_up else 0
    return wait_for_jobs(runs, record, settings, log_root, done_before, console)


def wait_for_jobs(runs: Sequence[Run], record: JobRecord, settings: ClusterSettings, log_root: str,
                  done_before: int, console: Console) -> int:
    """Poll the recorded jobs of ``runs`` until none is queued or running, showing the progress line; then
    report the runs that failed."""
    progress = Progress(total=done_before + len(runs))
    try:
        while True:
            ids = {r.out: record.get(r)["job_id"] for r in runs if record.get(r)}
            active = active_jobs(settings.cluster, list(ids.values()), log_root)
            running = [r for r in runs if not r.finished and active.get(ids.get(r.out)) == "RUNNING"]
            ended = [r for r in runs if ids.get(r.out) not in active]
            progress.done = done_before + sum(r.finished for r in runs)
            progress.failed = sum(not r.finished for r in ended)
            console.progress(progress.line([0.0] * len(running), slots=None))
            if not active:
                break
            time.sleep(settings.poll_s)
    except KeyboardInterrupt:
        console.event("stopped waiting; the jobs go on: re-run this command to collect them")
        console.close()
        return 130
    console.close()
    failed = [r for r in runs if not r.finished]
    for run in failed:
        console.event(f"failed {run.out} (job {record.get(run)['job_id']}; log {run.console_log})")
    if failed:
        print(f"{len(failed)} run(s) failed; re-run this command to resubmit them", file=sys.stderr)
        return 1
    return 0
