"""The running ``reminders dev`` of a data directory, as other commands find it.

``dev`` holds an exclusive lock on ``<data dir>/dev.lock`` for its whole life; the kernel
drops the lock when the process ends, however it ends. Once its database and embedded
Redis server are up it writes ``<data dir>/instance.json`` (pid, database URL, Redis URL
and key namespace, API address) and removes it when it stops. A second ``dev`` on the same
directory is refused at the lock, before it touches anything. Other commands trust the
file only while the lock is held, so one left behind by a killed ``dev`` is ignored.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LOCK_FILE = "dev.lock"
INSTANCE_FILE = "instance.json"
# A command probing the lock holds it for microseconds; a starting dev waits that out.
CLAIM_PATIENCE_SECONDS = 1.0
# How long a command waits for a dev that holds the lock but is still starting.
STARTING_PATIENCE_SECONDS = 15.0


@dataclass(frozen=True)
class Instance:
    """What a running ``dev`` tells the other commands."""

    pid: int
    database_url: str
    redis_url: str
    redis_namespace: str
    api_url: str


class InstanceRunning(Exception):
    """Another ``dev`` holds the data directory; the message says which."""


class InstanceStarting(Exception):
    """A ``dev`` holds the data directory but has not published its addresses yet."""


class InstanceLock:
    """The data directory, held by this ``dev`` until `release`."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd = fd

    def publish(self, instance: Instance) -> None:
        """Write the instance file atomically, readable by its owner only (it holds URLs)."""
        path = self.data_dir / INSTANCE_FILE
        partial = path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(instance), out, indent=2)
        partial.replace(path)

    def release(self) -> None:
        """Remove the instance file, then let go of the lock (the lock file stays)."""
        (self.data_dir / INSTANCE_FILE).unlink(missing_ok=True)
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = -1


def claim(data_dir: Path) -> InstanceLock:
    """Take the data directory for this process.

    Raises:
        InstanceRunning: another ``dev`` runs on it (its pid and API address named).
        OSError: the directory cannot hold the lock file.
    """
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + CLAIM_PATIENCE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise InstanceRunning(_describe(data_dir)) from None
            time.sleep(0.05)
            continue
        # A file left by a killed dev must not pass for this one's while it starts.
        (data_dir / INSTANCE_FILE).unlink(missing_ok=True)
        return InstanceLock(data_dir, fd)


def _describe(data_dir: Path) -> str:
    instance = _read(data_dir)
    where = f" (pid {instance.pid}, API {instance.api_url})" if instance else ""
    return f"reminders dev is already running in {data_dir}{where}"


def _read(data_dir: Path) -> Instance | None:
    try:
        return Instance(**json.loads((data_dir / INSTANCE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _held(data_dir: Path) -> bool:
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def running(data_dir: Path) -> Instance | None:
    """The ``dev`` running on ``data_dir``, or None.

    Waits up to `STARTING_PATIENCE_SECONDS` for a ``dev`` that is still starting.

    Raises:
        InstanceStarting: the lock is held but the addresses did not appear in time.
    """
    deadline = time.monotonic() + STARTING_PATIENCE_SECONDS
    while _held(data_dir):
        instance = _read(data_dir)
        if instance is not None:
            return instance
        if time.monotonic() >= deadline:
            raise InstanceStarting(f"reminders dev in {data_dir} is still starting")
        time.sleep(0.1)
    return None
