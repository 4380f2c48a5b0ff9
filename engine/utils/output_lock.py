"""One run per output folder: a lock file ``OUTPUT_DIR/.lock`` holding the pid and host of the run that writes
there.

Two runs writing into one folder would interleave ``log.txt`` and ``metrics.jsonl`` and overwrite each other's
checkpoints. ``train.py`` takes the lock before it writes anything and removes it when it ends (by an error
too); a second run into the folder stops with one line naming the first (pid, host, start time).

A run that Ctrl-C or SIGTERM stops (a scheduler's time limit or pre-emption, ``scancel``) removes its lock on
the way out (``engine.utils.errors.interrupt_on_sigterm``). A lock outlives a run that was killed (``kill -9``,
the out-of-memory killer, a crashed node). It is *stale*, and the next run takes it over, saying so in its log,
when

- its process is gone from this host: the pid does not run here, or runs but started at another time than
  the lock's (the pid was reused by another program). "This host" is the host name and the pid namespace: a
  container sharing the host's name (``--network host``) cannot see the pids of another, so its locks count
  as another host's;
- it comes from another host and its *heartbeat* stopped: a run keeps touching its lock (every
  ``OUTPUT_LOCK_STALE_S / 4`` seconds), and one untouched for ``OUTPUT_LOCK_STALE_S`` (default 300 s) is
  taken to be dead. A host cannot see another host's processes, so on a shared file system (NFS, Lustre; a
  job re-queued on another node) this timeout is the only evidence. The ages are measured against the file
  server's clock (the modification times of the lock and of a file just written beside it), not this
  host's, so skewed clocks do not matter. A run on another host that is alive but frozen for longer than
  the timeout (a suspended job) can lose its lock: raise ``OUTPUT_LOCK_STALE_S`` where jobs are suspended,
  or delete the lock file by hand when you know its run is gone.

The lock is created atomically (written under a temporary name, then hard-linked to ``.lock``, which fails
when it exists; where the file system has no hard links, ``O_EXCL``), so two runs starting together cannot
both take it. A stale lock is replaced, not removed (one atomic rename, so the file never vanishes for a
moment), by one run at a time (the one that creates ``.lock.takeover``), after checking that it is still the
lock judged stale: runs that find the same stale lock together end with one holder.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass

from engine.utils.errors import UserError
from engine.utils.tools import HOST, LOCK_NAME, pid_alive

logger = logging.getLogger(__name__)



def pid_namespace() -> str | None:
    """This process's pid namespace (``pid:[4026531836]``), or None where unknown. Containers may share a host
    name (``--network host``) but not their pids: a pid is only checked where the namespace is the same."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


PID_NAMESPACE = pid_namespace()


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, from ``/proc``), or None where unknown: with the
    pid it identifies a process, as a pid alone is reused once its process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (name) ", which may hold spaces
    try:
        return int(fields[19])  # field 22 of proc(5): starttime
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class LockHolder:
    """The run a lock file names."""

    pid: int
    host: str
    started: str  # local time the run took the lock, for people
    process_start: int | None = None  # process_start_time(pid) on its host
    pid_namespace: str | None = None  # pid_namespace() of its process

    def runs_here(self) -> bool:
        """Whether its pid can be looked up from this process: the same host and pid namespace."""
        if self.host != HOST:
            return False
        return self.pid_namespace is None or PID_NAMESPACE is None or self.pid_namespace == PID_NAMESPACE

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (started {self.started})"


def _read_holder(path: str) -> LockHolder | None:
    """The holder a lock file names, or None when it cannot be read (vanished, or not a lock of this engine)."""
    try:
        with open(path) as f:
            raw = json.load(f)
        return LockHolder(int(raw["pid"]), str(raw["host"]), str(raw.get("started", "?")),
                          raw.get("process_start"), raw.get("pid_namespace"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class OutputLock:
    """The lock of one output folder, held by this process until :meth:`release`.

    ``OutputLock.acquire(folder)`` takes it or raises a :class:`UserError` naming the run that holds it;
    ``took_over`` says which stale lock it replaced, and why (None when there was none), for the log.
    """

    def __init__(self, path: str, stale_after_s: float, took_over: str | None) -> None:
        self.path = path
        self.stale_after_s = stale_after_s
        self.took_over = took_over
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="output-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    # ---------------------------------------------------------------- taking it
    @classmethod
    def acquire(cls, folder: str, stale_after_s: float = 300.0) -> "OutputLock":
        path = os.path.join(folder, LOCK_NAME)
        me = LockHolder(os.getpid(), HOST, time.strftime("%Y-%m-%d %H:%M:%S"), process_start_time(os.getpid()),
                        PID_NAMESPACE)
        content = json.dumps({"pid": me.pid, "host": me.host, "started": me.started,
                              "process_start": me.process_start, "pid_namespace": me.pid_namespace,
                              "command": " ".join(sys.argv)}) + "\n"
        took_over = None
        for _ in range(100):  # rounds: other runs may take, release or be taking over the lock meanwhile
            try:
                probe = _write_probe(path, content)  # our lock's content, stamped with the file server's "now"
                try:
                    if _link_or_create(probe.path, path, content):
                        return cls(path, stale_after_s, took_over)
                    holder, age = _read_holder(path), _age(path, probe.mtime)
                    if age is None:
                        continue  # released meanwhile: try again
                    reason = _stale_reason(holder, age, stale_after_s)
                    if reason is None:
                        who = holder.describe() if holder else "a run whose lock cannot be read"
                        raise UserError(f"output folder {folder} is in use by {who}: wait for that run to end or use "
                                        f"another --output-dir (if no run is using it, delete {path})")
                    if _replace_stale(path, holder, probe, stale_after_s):
                        took_over = (f"removed a stale lock of {holder.describe()}: {reason}" if holder else
                                     f"removed a stale, unreadable lock: {reason}")
                        return cls(path, stale_after_s, took_over)
                finally:
                    _remove(probe.path)
            except OSError as e:
                raise UserError(f"cannot write the lock {path}: {e.strerror or e} "
                                f"(--output-dir / OUTPUT_DIR)") from None
            time.sleep(0.02)  # another run is taking over the stale lock: see what it leaves
        raise UserError(f"cannot take the lock {path}: other runs keep taking it; use another --output-dir")

    # -------------------------------------------------------------- holding it
    def _beat(self) -> None:
        interval = max(0.05, self.stale_after_s / 4)
        while not self._stop.wait(interval):
            try:
                os.utime(self.path)
            except OSError:  # removed by hand, or the folder is gone: nothing to keep alive
                pass

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this process's."""
        self._stop.set()
        self._heartbeat.join(timeout=5)
        holder = _read_holder(self.path)
        if holder is not None and (holder.pid, holder.host, holder.pid_namespace) == (os.getpid(), HOST, PID_NAMESPACE):
            _remove(self.path)

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass(frozen=True)
class _Probe:
    path: str
    mtime: float


def _write_probe(lock_path: str, content: str) -> _Probe:
    """Write ``content`` to a temporary file beside the lock and return it with its modification time: the
    file server's clock now, against which the lock's age is measured."""
    path = _private_name(lock_path, "probe")
    with open(path, "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    return _Probe(path, os.stat(path).st_mtime)


def _link_or_create(source: str, path: str, content: str) -> bool:
    """Make ``path`` a complete copy of ``source`` unless ``path`` exists; whether it was made."""
    try:
        os.link(source, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
            raise
    try:  # no hard links here: O_EXCL (a reader may briefly see the file empty, which reads as a young lock)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(content)
    return True


def _age(path: str, now: float) -> float | None:
    """Seconds since the lock was last touched, on the file server's clock; None when it is gone."""
    try:
        return max(0.0, now - os.stat(path).st_mtime)
    except FileNotFoundError:
        return None


def _stale_reason(holder: LockHolder | None, age: float, stale_after_s: float) -> str | None:
    """Why the lock is stale, or None while its run may be alive (see the module docstring)."""
    if holder is not None and holder.runs_here():
        if not pid_alive(holder.pid):
            return f"pid {holder.pid} no longer runs on this host"
        current = process_start_time(holder.pid)
        if holder.process_start is not None and current is not None and current != holder.process_start:
            return f"pid {holder.pid} now belongs to another process"
        return None
    if age > stale_after_s:
        return f"not touched for {age:.0f} s (OUTPUT_LOCK_STALE_S {stale_after_s:g})"
    return None


# A run killed while taking over a stale lock leaves the takeover's own lock; it is removed after this long.
TAKEOVER_STALE_S = 30.0


def _replace_stale(path: str, judged: LockHolder | None, probe: "_Probe", stale_after_s: float) -> bool:
    """Replace the stale lock at ``path`` by ``probe`` (our lock), one run at a time: the run that creates
    ``<lock>.takeover`` checks that the lock is still the one judged stale and replaces it in one atomic rename,
    so that the lock file never disappears meanwhile; the others go round again and find our lock. Whether
    ``path`` is now ours."""
    takeover = path + ".takeover"
    if not _link_or_create(probe.path, takeover, ""):
        age = _age(takeover, probe.mtime)
        if age is not None and age > TAKEOVER_STALE_S:
            _remove(takeover)
        return False
    try:
        age = _age(path, probe.mtime)
        current = _read_holder(path)
        if age is None or current != judged or _stale_reason(current, age, stale_after_s) is None:
            return False
        os.replace(probe.path, path)
        return True
    finally:
        _remove(takeover)


def _private_name(lock_path: str, what: str) -> str:
    """A name beside the lock that no other process or thread uses, in the form of the temporaries that
    ``engine.utils.tools.remove_write_leftovers`` removes once their process is gone."""
    folder, name = os.path.split(lock_path)
    return os.path.join(folder, f"{name}-{what}-{threading.get_ident()}.{os.getpid()}@{HOST}.tmp")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
