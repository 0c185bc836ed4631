"""Structured logs: one JSON object per line on stderr, from our code and from libraries.

Events are named (``reminder.sent``, ``scan.finished``) and carry identifiers only
(``task_id``, ``message_id``, ``attempt``, ``error_type``); task titles, notes, tokens and
secrets are never passed to a logger. Library records (Dramatiq, gunicorn, Alembic) go
through the same renderer so a log shipper sees one format. A person watching a terminal
(``reminders dev``) gets the same events as aligned console lines instead
(``REMINDERS_LOG_FORMAT``: ``auto`` picks console only when stderr is a terminal).
"""

from __future__ import annotations

import logging
import os
import select
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog
from dramatiq.compat import StreamablePipe

LogFormat = Literal["auto", "json", "console"]

_SHARED_PROCESSORS: list[Any] = [
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
]


def configure_logging(level: str = "INFO", log_format: LogFormat = "json") -> None:
    """Route structlog and the standard library through one renderer on stderr.

    Args:
        level: the root level (``REMINDERS_LOG_LEVEL``).
        log_format: ``REMINDERS_LOG_FORMAT``; the default suits code that reads its own
            logs back (tests), the processes pass their setting.
    """
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # a disabled level costs no processing
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = (
        WholeLinesToStderr(sys.stderr)
        if isinstance(sys.stderr, StreamablePipe)
        else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(formatter(log_format))
    handler.addFilter(MigrationsAtDebug())
    # Nothing rendered reads where a record was logged from, or its thread or process (the
    # logging HOWTO's "Optimization"): each would cost a stack walk or a lookup per line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO with its full URL, which may carry a receiver's
    # credentials; delivery logs its own events with identifiers only.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))


def console_wanted(log_format: str) -> bool:
    """Whether ``log_format`` means console lines here.

    ``auto`` asks whether file descriptor 2 is a terminal, not ``sys.stderr``: in a Dramatiq
    worker process ``sys.stderr`` is a pipe to the main process, whose stderr is the
    terminal the lines end up on.
    """
    if log_format == "auto":
        return _on_terminal()
    return log_format == "console"


def _on_terminal() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False


class MigrationsAtDebug(logging.Filter):
    """Alembic's INFO lines (which migration runs, which DDL mode) as DEBUG records.

    ``reminders dev`` migrates its database at every start; at INFO those lines are a dozen
    lines of chatter before the banner. They are kept for whoever runs at DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not record.name.startswith("alembic"):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class WholeLinesToStderr(logging.StreamHandler):
    """In a Dramatiq worker process: each line written to the inherited stderr at once.

    Dramatiq's command line gives each worker process a pipe as ``sys.stderr`` and a thread
    of its main process copies every line from it to the real stderr: per line, a
    ``send_bytes`` here, then a wake-up, two reads, a write and a flush there — for the log
    channel, once per reminder. The inherited file descriptor 2 is where those lines end up
    anyway. A line of at most ``PIPE_BUF`` bytes written in one ``write`` is never
    interleaved with another process's on a pipe (nor on a file, whose offset the
    processes share), so those go there directly; a longer one (a traceback) still goes
    through Dramatiq's relay, which copies it whole. The line is written before ``emit``
    returns, as before: the log channel's delivery is done when its line is.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            data = line.encode("utf-8", errors="backslashreplace")
            if len(data) > select.PIPE_BUF:
                self.stream.write(line)
                return
            while data:
                data = data[os.write(2, data) :]
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def formatter(log_format: str = "json") -> logging.Formatter:
    """The formatter of every record, ours or a library's, in ``log_format`` (see
    `console_wanted`)."""
    return console_formatter() if console_wanted(log_format) else json_formatter()


def json_formatter() -> logging.Formatter:
    """The formatter that renders any log record, ours or a library's, as one JSON line."""
    return _EventFormatter(
        foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.ExtraAdder()],
        processors=[
            _name_library_events,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )


def console_formatter() -> logging.Formatter:
    """The formatter of console lines: time, level, event (a library's message), logger.

    Coloured only on a terminal (not in a file written with ``REMINDERS_LOG_FORMAT=console``).
    Tracebacks are plain: a rich one would print each frame's local variables, which may
    hold a token or a task's title.
    """
    return _EventFormatter(
        foreign_pre_chain=[*_SHARED_PROCESSORS, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(
                colors=_on_terminal(),
                timestamp_key="ts",
                pad_event_to=40,
                exception_formatter=structlog.dev.plain_traceback,
            ),
        ],
    )


class _EventFormatter(structlog.stdlib.ProcessorFormatter):
    """structlog's ProcessorFormatter, without its copy of the record for our own events.

    For an event logged through structlog (``record.msg`` is its event dict) and carrying
    no exception or stack, the same processors render the same line from a copy of the
    dict; the record itself is not changed, so it needs no copy (a second ``LogRecord``
    per line, and the base formatter's pass over it, cost more than the rendering). Any
    other record takes the general path.
    """

    def format(self, record: logging.LogRecord) -> str:
        name = getattr(record, "_name", None)
        event = record.msg
        if name is None or type(event) is not dict or record.exc_info or record.stack_info:
            return super().format(record)
        rendered: Any = {**event, "_record": record, "_from_structlog": True}
        for processor in self.processors:
            rendered = processor(self.logger, name, rendered)
        return str(rendered)


def gunicorn_log_config(level: str, log_format: LogFormat = "json") -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its error and access logs as our lines on stderr."""
    handler = {"class": "logging.StreamHandler", "formatter": "lines", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"lines": {"()": "shared.logs.formatter", "log_format": log_format}},
        "handlers": {"stderr": handler},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": level, "handlers": ["stderr"], "propagate": False},
        },
    }


def _name_library_events(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # A library's free-text message becomes "message"; "event" stays a stable name.
    record = event.get("_record")
    if record is not None and record.name and not record.name.startswith("reminders"):
        event["message"] = event.pop("event", "")
        event["event"] = "log"
        event["logger"] = record.name
    return event


def get_logger(name: str) -> Any:
    """A structlog logger whose records carry ``logger=reminders.<name>``."""
    return structlog.get_logger(f"reminders.{name}")
