"""How a job child is started: its own process group, working directory, allow-listed
environment, resource limits, and a size-capped log. The parent (worker.py) owns the outcome.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import resource
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from core.config import WorkerConfig

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TAIL_BYTES = 64 * 1024
STORE_URL_NAMES = ("EDGEHOOK_STORE_URL",)


def job_environment(
    allow: Sequence[str],
    worker_env: Mapping[str, str],
    wandb_key: str | None,
    job_dir: Path,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """Built from nothing: a fixed base, the names the rule allows, and edgehook's own job
    variables. WANDB_API_KEY comes from the worker's secret, never from its environment."""
    env = {
        "PATH": SAFE_PATH,
        "HOME": str(job_dir),
        "LANG": "C.UTF-8",
        "TMPDIR": str(job_dir / "tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name in allow:
        if name == "WANDB_API_KEY":
            if wandb_key:
                env[name] = wandb_key
        elif name.startswith(STORE_URL_NAMES):
            continue  # the store's URL may hold its password: no rule passes it on
        elif name in worker_env:
            env[name] = worker_env[name]
    env.update(extra)
    return env


def command_environment(
    args: Mapping[str, Any], event: Mapping[str, Any], job_id: int
) -> dict[str, str]:
    """What a `command` action receives: each arg as EDGEHOOK_ARG_<NAME>, the event as JSON."""
    env = {f"EDGEHOOK_ARG_{name.upper()}": _text(value) for name, value in args.items()}
    env["EDGEHOOK_EVENT"] = json.dumps(event, sort_keys=True)
    env["EDGEHOOK_JOB_ID"] = str(job_id)
    return env


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def make_job_dir(jobs_dir: Path, job_id: int, attempt: int, user: str | None) -> Path:
    """A fresh directory per attempt, mode 0700, owned by the job's user."""
    path = jobs_dir / str(job_id) / f"attempt-{attempt}"
    jobs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (jobs_dir / str(job_id)).mkdir(exist_ok=True, mode=0o700)
    path.mkdir(mode=0o700)
    (path / "tmp").mkdir(mode=0o700)
    if user is not None and os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        for target in (jobs_dir / str(job_id), path, path / "tmp"):
            os.chown(target, entry.pw_uid, entry.pw_gid)
    return path


@dataclass(frozen=True)
class Limits:
    address_space_mb: int
    open_files: int
    cpu_seconds: int

    @classmethod
    def from_config(cls, config: WorkerConfig) -> Limits:
        return cls(config.address_space_mb, config.open_files, config.cpu_seconds)

    def apply(self) -> None:
        """Runs in the child between fork and exec."""
        # If the worker dies (even by SIGKILL) its child dies too: otherwise an orphan could
        # finish a job that the reaper has already handed to another worker.
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if self.address_space_mb:
            size = self.address_space_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (size, size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))
        if self.cpu_seconds:
            # SIGXCPU at the soft limit, SIGKILL a little later.
            resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def spawn(
    argv: Sequence[str], job_dir: Path, env: Mapping[str, str], limits: Limits, user: str | None
) -> subprocess.Popen[bytes]:
    """Start the child: argv as given (never a shell), a new session (so its whole process
    group can be signalled), no inherited descriptors, stdout and stderr on one pipe."""
    as_user = user if user is not None and os.geteuid() == 0 else None
    return subprocess.Popen(
        list(argv),
        cwd=job_dir,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        close_fds=True,
        # preexec_fn is safe here: the worker is single-threaded.
        start_new_session=True,
        preexec_fn=limits.apply,
        umask=0o077,
        user=as_user,
        group=pwd.getpwnam(as_user).pw_gid if as_user else None,
        extra_groups=[] if as_user else None,
    )


def signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the child's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


class CappedLog:
    """A job's stdout/stderr, at most `limit` bytes on disk: the head as it comes, then the
    last 64 KiB, with a line saying how much was dropped between them."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self._head_limit = max(0, limit - _TAIL_BYTES)
        self._file: BinaryIO = path.open("wb")
        self._written = 0
        self._tail = bytearray()
        self._dropped = 0
        self.last_line = ""

    def feed(self, data: bytes) -> None:
        lines = data.rstrip(b"\n").rsplit(b"\n", 1)
        if lines and lines[-1].strip():
            self.last_line = lines[-1].decode("utf-8", "replace")[-300:]
        room = self._head_limit - self._written
        if room > 0:
            self._file.write(data[:room])
            self._file.flush()
            self._written += min(room, len(data))
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > _TAIL_BYTES:
                self._dropped += len(self._tail) - _TAIL_BYTES
                del self._tail[: len(self._tail) - _TAIL_BYTES]

    def close(self) -> None:
        if self._dropped:
            self._file.write(f"\n[edgehook: {self._dropped} bytes dropped]\n".encode())
        self._file.write(bytes(self._tail))
        self._file.close()


class OutputPump:
    """The children's stdout pipes, read without blocking into their capped logs: the
    worker's loop waits here, for output or for its poll interval."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()

    def add(self, pipe: IO[bytes], log: CappedLog) -> None:
        os.set_blocking(pipe.fileno(), False)
        self._selector.register(pipe, selectors.EVENT_READ, log)

    def add_wakeup(self, fd: int) -> None:
        """A non-blocking pipe whose bytes only end the wait (pipeline.listen's NOTIFY)."""
        self._selector.register(fd, selectors.EVENT_READ, None)

    def remove_wakeup(self, fd: int) -> None:
        self._selector.unregister(fd)

    def wait(self, timeout: float) -> None:
        if not self._selector.get_map():
            time.sleep(timeout)
            return
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                _drain(key.fd)  # many notifications wake the loop once
                continue
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if data:
                key.data.feed(data)
            else:
                self.close(key.fileobj)  # type: ignore[arg-type]

    def close(self, pipe: IO[bytes]) -> None:
        """Read what is left, then close the pipe and its log (once; later calls do nothing)."""
        if pipe.closed:
            return
        key = self._selector.get_key(pipe)
        log: CappedLog = key.data
        try:
            while data := os.read(pipe.fileno(), 65536):
                log.feed(data)
        except (BlockingIOError, OSError):
            pass
        self._selector.unregister(pipe)
        pipe.close()
        log.close()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
