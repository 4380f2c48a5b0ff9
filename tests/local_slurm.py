"""A real single-node Slurm cluster for the tests: munge, slurmctld and slurmd (Debian's ``slurm-wlm`` and
``munge`` packages) started in a temporary folder with their own key, socket, ports and state, and stopped
afterwards. Nothing outside that folder is touched: the client commands find the cluster through
``SLURM_CONF``.

:func:`start` returns the environment of the cluster's clients, or raises :class:`Unavailable` with the
reason it cannot run here (packages absent, not root: slurmd launches jobs as their users and must run as
root, daemons that do not come up).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "srun", "scancel")
NODE = "testnode"


class Unavailable(Exception):
    """Why the cluster cannot run on this machine."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    folder: str
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def log_tail(self) -> str:
        """The end of every daemon log, for a failure message."""
        tails = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = os.path.join(self.folder, name)
            if os.path.isfile(path):
                with open(path, errors="replace") as f:
                    tails.append(f"--- {name}\n" + "".join(f.readlines()[-15:]))
        return "\n".join(tails)

    def stop(self) -> None:
        """Stop the daemons this cluster started (by their own processes), newest first."""
        for p in reversed(self.processes):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.processes):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start(folder: str, cpus: int = 2) -> Cluster:
    """Start the cluster under ``folder`` (one node, ``cpus`` CPUs, partition ``debug``)."""
    missing = [tool for tool in DAEMONS + CLIENTS if shutil.which(tool) is None
               and not os.path.exists(os.path.join("/usr/sbin", tool))]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise Unavailable("slurmd must run as root to launch jobs, and the tests do not run as root")
    sbin = lambda tool: shutil.which(tool) or os.path.join("/usr/sbin", tool)  # noqa: E731
    os.makedirs(folder, mode=0o700, exist_ok=True)
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    key = os.path.join(folder, "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_socket = os.path.join(folder, "munge.socket")
    conf = os.path.join(folder, "slurm.conf")
    ctl_port, node_port = _free_port(), _free_port()
    with open(conf, "w") as f:
        f.write(f"""ClusterName=protocoltest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctl_port}
SlurmdPort={node_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={NODE} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": conf}
    for name in list(env):  # a test run inside a Slurm job must not talk to the outer cluster
        if name.startswith(("SLURM_", "SBATCH_", "SRUN_")) and name != "SLURM_CONF":
            env.pop(name)
    cluster = Cluster(folder, env)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
    try:
        cluster.processes.append(subprocess.Popen(
            [sbin("munged"), "-F", "-f", f"--socket={munge_socket}", f"--key-file={key}",
             f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed"],
            env=env, **quiet))
        _wait_for(lambda: os.path.exists(munge_socket), 10, "munged did not create its socket", cluster)
        cluster.processes.append(subprocess.Popen([sbin("slurmctld"), "-D", "-i", "-f", conf], env=env, **quiet))
        cluster.processes.append(subprocess.Popen([sbin("slurmd"), "-D", "-N", NODE, "-f", conf], env=env, **quiet))
        _wait_for(lambda: _node_ready(env), 40, "the node did not become idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_ready(env: dict[str, str]) -> bool:
    shown = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True, timeout=20)
    return shown.returncode == 0 and shown.stdout.strip() in ("idle", "mixed", "allocated")


def _wait_for(ready, timeout_s: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in cluster.processes):
            break
        if ready():
            return
        time.sleep(0.5)
    dead = [p.args[0] for p in cluster.processes if p.poll() is not None]
    raise Unavailable(f"{what}{f' ({os.path.basename(dead[0])} exited)' if dead else ''}:\n{cluster.log_tail()}")
