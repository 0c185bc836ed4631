"""The WSGI entry point for gunicorn (``api.wsgi:app``): the API configured from the environment."""

from __future__ import annotations

import sys

from api.app import create_app
from shared.config import ConfigError, load_settings
from shared.logs import configure_logging

try:
    settings = load_settings()
except ConfigError as error:
    print(error, file=sys.stderr)
    raise SystemExit(2) from None

configure_logging(settings.log_level)
app = create_app(settings)
