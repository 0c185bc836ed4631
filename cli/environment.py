"""Which database and Redis server a command uses, and the one line it ends with if it can't.

A command run with ``DATABASE_URL`` or ``REDIS_URL`` unset uses those of the ``reminders
dev`` running on its data directory (SPEC §8), found through `cli.instance`. With none
running it uses the configuration, except that it never falls back to the default Redis
URL for a data directory that has an embedded server: that server's queues and dead
letters would look empty. What the user can fix (no database here, an unusable data
directory, a server that does not answer) ends the command with one line naming it and
the exit status of its kind (`shared.exit_status`): every failure of a command is a
`CommandError`, and `ReportingGroup` gives the others (a usage error, a bug) theirs.
"""

from __future__ import annotations

import stat
import sys
import traceback
from pathlib import Path
from typing import Any

import click
from sqlalchemy import exc as sqlalchemy_errors
from sqlalchemy.engine import make_url

from cli.instance import InstanceStarting, running
from shared.config import Settings, redact_url, settings_or_exit
from shared.exit_status import ExitStatus
from shared.logs import configure_logging

SETTINGS_KEY = "reminders.settings"


class CommandError(click.ClickException):
    """A command's failure: one line for the user, and the status that says its kind."""

    def __init__(self, status: ExitStatus, message: str) -> None:
        super().__init__(message)
        # click types exit_code as a class variable, but reads it from the instance.
        self.exit_code = status  # type: ignore[misc]


def data_dir_of(settings: Settings) -> Path:
    return settings.data_dir.absolute()


def make_private_directory(path: Path) -> str | None:
    """Create ``path`` for its owner only (mode 0700), or take an existing one's group and
    other permissions away: it holds the database, the endpoint secrets' key and the
    embedded Redis server's password. Returns a notice when an existing directory's mode
    was changed, None otherwise.

    Raises:
        OSError: it cannot be created, or its mode cannot be changed (not its owner).
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return None
    path.chmod(mode & 0o700)
    return f"made {path} private to its owner (mode {mode:04o} -> {mode & 0o700:04o})"


def unusable_data_dir(settings: Settings, reason: OSError | str) -> CommandError:
    why = reason if isinstance(reason, str) else (reason.strerror or str(reason))
    return CommandError(
        ExitStatus.CONFIG,
        f"cannot use REMINDERS_DATA_DIR={data_dir_of(settings)} as the data directory: {why}",
    )


def beside_running_instance(settings: Settings) -> Settings | None:
    """``settings`` with the unset URLs taken from the ``dev`` on its data directory.

    None when no ``dev`` runs there.
    """
    explicit = settings.model_fields_set
    if {"database_url", "redis_url"} <= explicit:
        return settings
    try:
        instance = running(data_dir_of(settings))
    except InstanceStarting as exc:
        raise CommandError(ExitStatus.TRY_AGAIN, f"{exc}; try again in a moment") from None
    if instance is None:
        return None
    update: dict[str, Any] = {}
    if "database_url" not in explicit:
        update["database_url"] = instance.database_url
    if "redis_url" not in explicit:
        update["redis_url"] = instance.redis_url
        if "redis_namespace" not in explicit:
            update["redis_namespace"] = instance.redis_namespace
    return settings.model_copy(update=update)


def command_settings(*, redis: bool = False, create_database: bool = False) -> Settings:
    """The settings of a one-shot command, remembered for its error messages.

    Args:
        redis: the command uses the Redis server too.
        create_database: the command may create the SQLite file (``db upgrade``); the
            others refuse to run on a database that does not exist.

    Raises:
        CommandError: one line naming the problem.
    """
    settings = settings_or_exit()
    # Its events (an operator's ``ops.*`` actions) go to stderr with the processes' format;
    # structlog's default would print them on stdout, into a table or a ``--json`` answer.
    configure_logging(settings.log_level, settings.log_format)
    beside = beside_running_instance(settings)
    if beside is not None:
        settings = beside
    elif redis and "redis_url" not in settings.model_fields_set:
        data_dir = data_dir_of(settings)
        if (data_dir / "redis").is_dir():
            raise CommandError(
                ExitStatus.UNAVAILABLE,
                f"reminders dev is not running in {data_dir}, so neither is its embedded "
                "Redis server: start `reminders dev`, or set REDIS_URL",
            )
    click.get_current_context().meta[SETTINGS_KEY] = settings
    if not create_database:
        _require_database(settings)
    return settings


def _sqlite_path(settings: Settings) -> Path | None:
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).absolute()


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
        except OSError:
            continue
    return Path("/")


def _require_database(settings: Settings) -> None:
    path = _sqlite_path(settings)
    if path is None or path.is_file():
        return
    if "database_url" in settings.model_fields_set:
        raise CommandError(
            ExitStatus.NOT_FOUND,
            f"no database at {path} (DATABASE_URL): run `reminders db upgrade` first",
        )
    existing = _nearest_existing(data_dir_of(settings))
    if not existing.is_dir():
        raise unusable_data_dir(settings, f"{existing} is not a directory")
    raise CommandError(
        ExitStatus.NOT_FOUND,
        f"no database at {path}: run this in the folder where you run `reminders dev`, "
        "or set REMINDERS_DATA_DIR or DATABASE_URL",
    )


def prepare_database_directory(settings: Settings) -> None:
    """Create the folder of a SQLite database file (``db upgrade``), or say why not."""
    path = _sqlite_path(settings)
    if path is None:
        return
    try:
        if path.parent == data_dir_of(settings):
            notice = make_private_directory(path.parent)
            if notice:
                click.echo(notice, err=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if "database_url" in settings.model_fields_set:
            raise CommandError(
                ExitStatus.CONFIG,
                f"cannot create the folder of DATABASE_URL's file {path}: {exc.strerror}",
            ) from None
        raise unusable_data_dir(settings, exc) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _settings() -> Settings | None:
    context = click.get_current_context(silent=True)
    found = context.meta.get(SETTINGS_KEY) if context else None
    return found if isinstance(found, Settings) else None


def database_error(error: sqlalchemy_errors.DBAPIError) -> CommandError | None:
    """The one line for a database error the user can act on, or None (a bug: re-raise)."""
    settings = _settings()
    where = (
        make_url(settings.resolved_database_url).render_as_string(hide_password=True)
        if settings
        else "DATABASE_URL"
    )
    cause = _first_line(error.orig if error.orig is not None else error)
    if "no such table" in cause or ("relation" in cause and "does not exist" in cause):
        return CommandError(
            ExitStatus.NOT_FOUND,
            f"the database at {where} has no Reminders tables: run `reminders db upgrade`",
        )
    if isinstance(error, sqlalchemy_errors.OperationalError | sqlalchemy_errors.InterfaceError):
        return CommandError(
            ExitStatus.UNAVAILABLE, f"cannot reach the database at {where}: {cause}"
        )
    return None


def broker_error(error: Exception) -> CommandError:
    settings = _settings()
    where = redact_url(settings.redis_url) if settings else "REDIS_URL"
    return CommandError(
        ExitStatus.UNAVAILABLE, f"cannot reach Redis at {where}: {_first_line(error)}"
    )


def reported(error: Exception) -> CommandError | None:
    """The one line for ``error`` if the user can act on it; None for a bug."""
    if isinstance(error, sqlalchemy_errors.DBAPIError):
        return database_error(error)
    # Only a loaded module can have raised its errors: no import just to classify.
    redis = sys.modules.get("redis")
    dramatiq_errors = sys.modules.get("dramatiq.errors")
    unreachable: tuple[type[Exception], ...] = (
        *((redis.ConnectionError, redis.TimeoutError) if redis else ()),
        *((dramatiq_errors.BrokerConnectionError,) if dramatiq_errors else ()),
    )
    if unreachable and isinstance(error, unreachable):
        return broker_error(error)
    return None


class ReportingGroup(click.Group):
    """The root command group: every way a command ends gets its `ExitStatus`.

    An unreachable database or Redis server is one line (`reported`); a usage error
    (click's own, status 2) is `ExitStatus.USAGE`; an exception nobody expected is a bug:
    its traceback, and `ExitStatus.SOFTWARE` instead of the interpreter's 1.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            exc.exit_code = ExitStatus.USAGE  # type: ignore[misc]
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = ExitStatus.USAGE  # type: ignore[misc]
            raise
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            line = reported(exc)
            if line is not None:
                raise line from None
            traceback.print_exc()
            raise SystemExit(ExitStatus.SOFTWARE) from None
