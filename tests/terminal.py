"""A process run on a real pseudo-terminal, as a person would run it, its output collected.

The process's stdin, stdout and stderr are the terminal's device (``isatty`` is true for
each); a thread drains the other end, so the process never blocks on a full terminal, and
keeps everything written. Reads end when every process holding the device has closed it.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Terminal:
    """One process on its own pseudo-terminal."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        controller, device = pty.openpty()
        try:
            self.process = subprocess.Popen(
                list(argv),
                env=env,
                cwd=cwd,
                stdin=device,
                stdout=device,
                stderr=device,
                start_new_session=True,  # signalled by the test, not by a terminal's Ctrl-C
            )
        finally:
            os.close(device)
        self._controller = controller
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._controller, 65536)
            except OSError:  # EIO: the last holder of the device closed it
                chunk = b""
            if not chunk:
                break
            with self._lock:
                self._output += chunk
        os.close(self._controller)

    def raw(self) -> str:
        """Everything written so far, as the terminal received it (colours included)."""
        with self._lock:
            return self._output.decode(errors="replace")

    def lines(self) -> list[str]:
        """The complete lines written so far, without colours."""
        text = ANSI.sub("", self.raw()).replace("\r\n", "\n")
        return text.split("\n")[:-1]

    def wait_for(self, text: str, timeout: float) -> bool:
        """Whether ``text`` was written within ``timeout`` seconds (False once it exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in ANSI.sub("", self.raw()):
                return True
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                return text in ANSI.sub("", self.raw())
            time.sleep(0.05)
        return False

    def finish(self, timeout: float = 30) -> int | None:
        """Wait for the process to exit (killing it after ``timeout``) and for its output."""
        try:
            status: int | None = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            status = None
        self._reader.join(timeout=5)
        return status

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(timeout=10)
        self._reader.join(timeout=5)
