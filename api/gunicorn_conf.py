"""gunicorn settings for the API (``gunicorn --config python:api.gunicorn_conf``).

Our log lines (`shared.logs`), from the validated settings: a bad variable stops the
server at once with the one-line configuration error, before any worker boots.

The garbage collector is told to leave the loaded application alone: a worker holds
~140,000 objects after loading Flask, pydantic and SQLAlchemy, and a full collection that
walks them all stops every request of that worker for ~80 ms, every few thousand
requests. Frozen after the worker loads the app, they are never walked again.
"""

from __future__ import annotations

import gc
from typing import Any

from shared.config import settings_or_exit
from shared.logs import gunicorn_log_config

_settings = settings_or_exit()
logconfig_dict = gunicorn_log_config(_settings.log_level, _settings.log_format)


def post_worker_init(worker: Any) -> None:
    gc.freeze()
