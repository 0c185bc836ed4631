"""gunicorn settings for the API (``gunicorn --config python:api.gunicorn_conf``): JSON logs."""

from __future__ import annotations

import os

from shared.logs import gunicorn_log_config

logconfig_dict = gunicorn_log_config(os.environ.get("REMINDERS_LOG_LEVEL", "INFO"))
