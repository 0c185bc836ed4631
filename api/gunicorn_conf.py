"""gunicorn settings for the API (``gunicorn --config python:api.gunicorn_conf``).

Our log lines (`shared.logs`), from the validated settings: a bad variable stops the
server at once with the one-line configuration error, before any worker boots.

The garbage collector is told to leave the loaded application alone: a worker holds
~140,000 objects after loading Flask, pydantic and SQLAlchemy, and a full collection that
walks them all stops every request of that worker for ~80 ms, every few thousand
requests. Frozen after the worker loads the app, they are never walked again.

No control socket unless one is named with ``--control-socket``: gunicorn (25.1 and
later) otherwise opens it at one path per user (``$XDG_RUNTIME_DIR/gunicorn.ctl`` or
``~/.gunicorn/gunicorn.ctl``), so every server of that user announces the same socket and
the first to stop deletes it from under the others. ``reminders dev`` names one in its
data directory.
"""

from __future__ import annotations

import gc
from typing import Any

from shared.config import settings_or_exit
from shared.logs import configure_logging, gunicorn_log_config

_settings = settings_or_exit()
logconfig_dict = gunicorn_log_config(_settings.log_level, _settings.log_format)


def on_starting(server: Any) -> None:
    """Turn the control socket off where it would be the per-user default (see above), and
    stop at once, before any worker boots, if this server's REMINDERS_SECRET_KEY differs
    from the other processes' (`shared.delivery.key_canary`)."""
    settings = server.cfg.settings
    socket = settings.get("control_socket")  # absent before gunicorn 25.1
    if socket is not None and socket.value == socket.default:
        server.cfg.set("control_socket_disable", True)
    from shared.delivery.key_canary import require_one_secret_key
    from shared.store.db import make_engine

    configure_logging(_settings.log_level, _settings.log_format)
    engine = make_engine(
        _settings.resolved_database_url, peer_timeout=_settings.peer_timeout_seconds
    )
    try:
        require_one_secret_key(_settings, engine)
    finally:
        engine.dispose()


def post_worker_init(worker: Any) -> None:
    gc.freeze()
