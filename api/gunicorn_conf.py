"""gunicorn settings for the API (``gunicorn --config python:api.gunicorn_conf``).

JSON logs, and the garbage collector told to leave the loaded application alone: a worker
holds ~140,000 objects after loading Flask, pydantic and SQLAlchemy, and a full
collection that walks them all stops every request of that worker for ~80 ms, every few
thousand requests. Frozen after the worker loads the app, they are never walked again.
"""

from __future__ import annotations

import gc
import os
from typing import Any

from shared.logs import gunicorn_log_config

logconfig_dict = gunicorn_log_config(os.environ.get("REMINDERS_LOG_LEVEL", "INFO"))


def post_worker_init(worker: Any) -> None:
    gc.freeze()
