"""The WSGI entry point for gunicorn (``api.wsgi:app``): the API configured from the environment."""

from __future__ import annotations

from api.app import create_app
from shared.config import settings_or_exit
from shared.logs import configure_logging

settings = settings_or_exit()

configure_logging(settings.log_level, settings.log_format)
app = create_app(settings)
