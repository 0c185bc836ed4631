"""One graceful stop when SIGTERM reaches the whole worker group at once.

Dramatiq's main process forwards the SIGTERM it gets to each worker process, and a worker
process takes its first SIGTERM as "stop gracefully" (finish what is in flight, put back
what it fetched ahead) and a second as "stop now". A supervisor that signals the whole
process group — systemd's default ``KillMode=control-group``, ``docker stop`` under an
init that signals the group, ``kill -TERM -<pgid>`` — reaches every worker process twice,
from the supervisor and from the main process, and Dramatiq stops them at once: the
deliveries in flight are cut off and come again later.

`OneStopPerSender` tells the two apart by sender. In each worker process SIGTERM is
taken by a thread of its own (``sigwaitinfo``, which says which process sent it) instead
of the interpreter's handler: the first SIGTERM, from anyone, starts Dramatiq's graceful
stop; a later one from a different sender is the same request arriving twice and is let
go (``worker.stop_signal_repeated``); a second one from the same sender asks again, and
stops the process at once, as Dramatiq does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from dramatiq import Middleware

from shared.logs import get_logger

log = get_logger("worker")

# Dramatiq's handler in its worker processes (``dramatiq.cli.worker_process``): the only one
# replaced here, so a process run another way keeps its own.
DRAMATIQ_WORKER_HANDLER = "worker_process.<locals>.termhandler"


class OneStopPerSender(Middleware):
    """Takes SIGTERM in a Dramatiq worker process from a thread that knows who sent it."""

    def after_process_boot(self, broker: Any) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        if getattr(handler, "__qualname__", None) != DRAMATIQ_WORKER_HANDLER:
            return
        assert callable(handler)
        # Blocked in this thread before any other is started, so every thread inherits it and
        # only `_take_signals` ever receives SIGTERM.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(
            target=_take_signals, args=(handler,), name="stop-signals", daemon=True
        ).start()


def _take_signals(handler: Callable[[int, Any], Any]) -> None:
    senders: set[int] = set()
    while True:
        sender = signal.sigwaitinfo({signal.SIGTERM}).si_pid
        if senders and sender not in senders:
            senders.add(sender)
            log.info("worker.stop_signal_repeated", sender=sender)
            continue
        senders.add(sender)
        try:
            handler(signal.SIGTERM, None)  # Dramatiq's: the graceful stop, or the second time
        except SystemExit as stop:  # raised here, not in the main thread: end the process
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(stop.code if isinstance(stop.code, int) else 1)
