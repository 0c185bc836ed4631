"""Configuration: every setting of every process, read from the environment once at start.

`load_settings()` validates the whole environment and raises `ConfigError` with one line
per bad variable, named as the operator typed it (``REMINDERS_MAX_RETRIES``, not
``max_retries``). Processes call it at start and stop with that message; nothing else in
the code reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.database_url import MULTI_HOST_FORM, sqlalchemy_database_url
from shared.exit_status import ExitStatus

DEFAULT_DATA_DIR = ".reminders"
THIRTY_DAYS = 30 * 24 * 3600


# REMINDERS_PEER_TIMEOUT's default: a few seconds, well above a healthy server's slowest
# answer here, well below TCP's own minutes.
DEFAULT_PEER_TIMEOUT_SECONDS = 5

# REMINDERS_HEARTBEAT_TIMEOUT_MS's default: three times the peer timeout's. A worker that
# loses Redis gives the connection up after the peer timeout and is connected again within
# a second or two of Redis answering, so a cut of up to about ten seconds leaves it its
# messages; a worker killed or cut off for longer has them given back within this plus a
# second. A healthy worker, however busy, is never silent half a second (bench/README.md).
DEFAULT_HEARTBEAT_TIMEOUT_MS = 15_000

# REMINDERS_PREFETCH_PER_THREAD's default. Measured (bench/README.md): a worker group's rate
# to a receiver that answers at once is the same at 1, 2, 4 and 16 per thread, and its no-op
# ceiling at 4 is 0.8 of 16's, thirty times what deliveries reach; a slow or cut-off process
# holds a quarter of what 16 made it hold, and a few per thread still hide a far Redis's
# round trip.
DEFAULT_PREFETCH_PER_THREAD = 4

# minute, hour, day of month, month, day of week (0 and 7 are Sunday)
CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


class ConfigError(Exception):
    """The environment holds a bad or missing value; the message names each variable."""


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SENTINEL_URL_FORM = "redis+sentinel://[user:password@]host:port[,host:port…]/<service name>[/<db>]"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelSet:
    """A Redis Sentinel set, as ``REDIS_URL`` names it: whom to ask which server is the
    primary of ``service``, and how to talk to them and to it.

    The user and password authenticate to the Sentinels and to the Redis servers alike;
    ``tls`` (``rediss+sentinel://``) is TLS to both.
    """

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False


def parse_sentinel_url(url: str) -> SentinelSet:
    """The Sentinel set a ``redis+sentinel://`` or ``rediss+sentinel://`` URL names.

    Raises:
        ValueError: the URL is not of the form `SENTINEL_URL_FORM`; the message says why.
    """
    try:
        parts = urlsplit(url)
    except ValueError as error:  # e.g. an unclosed "[" of an IPv6 address
        raise ValueError(f"{error}: {SENTINEL_URL_FORM}") from None
    if f"{parts.scheme}://" not in SENTINEL_SCHEMES:
        raise ValueError(f"a Sentinel URL starts with {' or '.join(SENTINEL_SCHEMES)}")
    if parts.query or parts.fragment:
        raise ValueError(f"a Sentinel URL takes no query or fragment: {SENTINEL_URL_FORM}")
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = tuple(_sentinel_address(host) for host in hosts.split(","))
    names = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if not names or not names[0]:
        raise ValueError(f"a Sentinel URL names the service after the hosts: {SENTINEL_URL_FORM}")
    if len(names) > 2 or (len(names) == 2 and not names[1].isdigit()):
        raise ValueError(
            f"after the service name comes at most a database number: {SENTINEL_URL_FORM}"
        )
    return SentinelSet(
        sentinels=sentinels,
        service=unquote(names[0]),
        db=int(names[1]) if len(names) == 2 else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss+sentinel",
    )


def _sentinel_address(text: str) -> tuple[str, int]:
    host, port = text, str(DEFAULT_SENTINEL_PORT)
    if text.startswith("["):  # an IPv6 address: [::1]:26379
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not a Sentinel's host:port")
            port = rest[1:]
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not a Sentinel's host:port: {SENTINEL_URL_FORM}")
    return host, int(port)


def redact_url(url: str) -> str:
    """``url`` without its password, to be shown or logged (even a URL too broken to parse)."""
    url = re.sub(r"(?<=[?&]password=)[^&#]+", "***", url)  # unix://...?password=...
    scheme, separator, rest = url.partition("://")
    end = min((rest.find(mark) for mark in "/?#" if mark in rest), default=len(rest))
    credentials, at, hosts = rest[:end].rpartition("@")
    if not separator or not at or ":" not in credentials:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}://{user}:***@{hosts}{rest[end:]}"


class Settings(BaseModel):
    """The service's settings. Each field's alias is its environment variable."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )

    data_dir: Path = Field(
        default=Path(DEFAULT_DATA_DIR),
        validation_alias="REMINDERS_DATA_DIR",
        description="Where the embedded default keeps its SQLite file and Redis data.",
    )
    database_url: str = Field(
        default="",
        validation_alias="DATABASE_URL",
        description="postgresql://..., postgresql+psycopg://... or sqlite:///path; several "
        f"PostgreSQL hosts (a primary and its standbys) as {MULTI_HOST_FORM}. "
        "Empty: a SQLite file in REMINDERS_DATA_DIR.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias="REDIS_URL",
        description="The Redis (or Valkey) server that carries the queue: redis://, rediss:// "
        f"or unix://, or the primary of a Sentinel set: {SENTINEL_URL_FORM} (rediss+sentinel:// "
        "for TLS).",
    )
    redis_namespace: str = Field(
        default="reminders",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        validation_alias="REMINDERS_REDIS_NAMESPACE",
        description="Prefix of every Redis key, so several deployments can share a server.",
    )
    remind_before_seconds: int = Field(
        default=86400,
        ge=60,
        le=THIRTY_DAYS,
        validation_alias="REMINDERS_REMIND_BEFORE_SECONDS",
        description="Default lead time of a reminder before the task is due.",
    )
    catchup_seconds: int = Field(
        default=3600,
        ge=0,
        validation_alias="REMINDERS_CATCHUP",
        description="After downtime, occurrences due less than this many seconds ago are "
        "still sent (late); older ones are recorded as missed.",
    )
    lookahead_seconds: int = Field(
        default=90,
        ge=0,
        le=3600,
        validation_alias="REMINDERS_LOOKAHEAD",
        description="The producer enqueues reminders whose remind time is less than this "
        "many seconds away, each delayed until its remind time; keep it above the scan "
        "interval so every reminder is held by a worker before it is due.",
    )
    min_recurrence_seconds: int = Field(
        default=3600,
        ge=1,
        le=THIRTY_DAYS,
        validation_alias="REMINDERS_MIN_RECURRENCE_SECONDS",
        description="A recurring task's occurrences may come no closer than this (its rule's "
        "local wall times); a rule that fires more often is refused.",
    )
    horizon_seconds: int = Field(
        default=86400,
        ge=600,
        le=THIRTY_DAYS,
        validation_alias="REMINDERS_HORIZON",
        description="How far ahead a recurring task's reminders exist as rows: the producer "
        "keeps every reminder whose remind time is less than this away materialised.",
    )
    history_days: int = Field(
        default=90,
        ge=8,
        le=36500,
        validation_alias="REMINDERS_HISTORY_DAYS",
        description="Final reminder rows (sent, cancelled, missed) older than this are purged "
        "by housekeeping; more than the dead-letter TTL, so no live message loses its row.",
    )
    scan_cron: str = Field(
        default="* * * * *",
        validation_alias="REMINDERS_SCAN_CRON",
        description="When the scheduler runs the producer (cron, evaluated in UTC).",
    )
    scan_batch_size: int = Field(
        default=1000,
        ge=1,
        le=50_000,
        validation_alias="REMINDERS_SCAN_BATCH_SIZE",
        description="Occurrences claimed and enqueued per producer transaction.",
    )
    requeue_after_seconds: int = Field(
        default=300,
        ge=1,
        validation_alias="REMINDERS_REQUEUE_AFTER",
        description="An occurrence left queued this long is checked against the broker; "
        "if its message is gone (Redis flushed or restarted) it is enqueued again.",
    )
    max_retries: int = Field(default=3, ge=0, le=100, validation_alias="REMINDERS_MAX_RETRIES")
    min_backoff_ms: int = Field(default=1000, ge=1, validation_alias="REMINDERS_MIN_BACKOFF_MS")
    max_backoff_ms: int = Field(default=300_000, ge=1, validation_alias="REMINDERS_MAX_BACKOFF_MS")
    dead_letter_ttl_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        validation_alias="REMINDERS_DEAD_LETTER_TTL",
        description="How long the broker keeps a dead letter; the database keeps the "
        "failure record regardless.",
    )
    heartbeat_timeout_ms: int = Field(
        default=DEFAULT_HEARTBEAT_TIMEOUT_MS,
        ge=1000,
        validation_alias="REMINDERS_HEARTBEAT_TIMEOUT_MS",
        description="A worker process silent this long (no call to Redis: it beats every "
        "second) is presumed dead, and the messages it fetched and did not finish go back "
        "on the queue for the others.",
    )
    prefetch_per_thread: int = Field(
        default=DEFAULT_PREFETCH_PER_THREAD,
        ge=1,
        le=1000,
        validation_alias="REMINDERS_PREFETCH_PER_THREAD",
        description="Reminders each worker process fetches ahead of its threads, per thread: "
        "what a slow or cut-off process holds back from the others is at most this many "
        "per thread.",
    )
    peer_timeout_seconds: int = Field(
        default=DEFAULT_PEER_TIMEOUT_SECONDS,
        ge=2,
        le=300,
        validation_alias="REMINDERS_PEER_TIMEOUT",
        description="Seconds a PostgreSQL or Redis server may leave a connection unanswered "
        "(no reply, no acknowledgement, no keepalive) before it counts as lost: a network "
        "partition is noticed within about this long, not left to TCP's minutes.",
    )
    webhook_url: str = Field(default="", validation_alias="REMINDERS_WEBHOOK_URL")
    webhook_secret: str = Field(default="", repr=False, validation_alias="REMINDERS_WEBHOOK_SECRET")
    webhook_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, validation_alias="REMINDERS_WEBHOOK_TIMEOUT"
    )
    # The deployment webhook's limits (SPEC §4.9); None: unlimited.
    webhook_max_concurrency: int | None = Field(
        default=None,
        ge=1,
        validation_alias="REMINDERS_WEBHOOK_MAX_CONCURRENCY",
        description="Requests to REMINDERS_WEBHOOK_URL in flight at once, across every worker "
        "process and host. Unset (or empty): no limit.",
    )
    webhook_max_per_second: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        validation_alias="REMINDERS_WEBHOOK_MAX_PER_SECOND",
        description="Requests per second to REMINDERS_WEBHOOK_URL (fractions allowed: 0.5 is "
        "one every 2 seconds). Unset (or empty): no limit.",
    )
    # Threads of a worker process that requests to slow receivers may hold together (SPEC §4.9).
    slow_lane_threads: int = Field(
        default=2, ge=1, le=256, validation_alias="REMINDERS_SLOW_LANE_THREADS"
    )
    secret_key: str = Field(
        default="",
        repr=False,
        validation_alias="REMINDERS_SECRET_KEY",
        description="Fernet key(s) that encrypt endpoint secrets at rest, comma-separated: "
        "the first encrypts, every one decrypts (key rotation). Empty: a key generated once "
        "and kept in REMINDERS_DATA_DIR/secret.key (one host; set it when API and workers "
        "run on different machines).",
    )
    allow_private_endpoints: bool = Field(
        default=False,
        validation_alias="REMINDERS_ALLOW_PRIVATE_ENDPOINTS",
        description="Let endpoints use http:// and loopback, private, link-local or reserved "
        "addresses (tests and local setups only).",
    )
    endpoint_disable_after_seconds: int = Field(
        default=5 * 24 * 3600,
        ge=1,
        le=365 * 24 * 3600,
        validation_alias="REMINDERS_ENDPOINT_DISABLE_AFTER",
        description="An endpoint whose every delivery attempt has failed for this many "
        "seconds is disabled; its reminders then dead-letter with 'endpoint disabled'.",
    )
    endpoint_attempts_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        validation_alias="REMINDERS_ENDPOINT_ATTEMPTS_DAYS",
        description="How long each endpoint's delivery attempts are kept (housekeeping).",
    )
    rate_limit: str = Field(
        default="600/minute",
        validation_alias="REMINDERS_RATE_LIMIT",
        description="Requests per API token (or per address without one), e.g. "
        "'600/minute;20/second', counted across all routes; empty turns rate limiting "
        "off (this limit and REMINDERS_AUTH_FAILURE_LIMIT).",
    )
    auth_failure_limit: str = Field(
        default="60/minute",
        validation_alias="REMINDERS_AUTH_FAILURE_LIMIT",
        description="Failed authentications per client address (a wrong, revoked or "
        "missing token, a refused sign-in); past it the address gets 429 on every request "
        "until the window moves on. Empty turns it off.",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        validation_alias="REMINDERS_METRICS_PORT",
        description="Port of the worker/scheduler Prometheus endpoint; 0 turns it off.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias="REMINDERS_LOG_LEVEL"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        validation_alias="REMINDERS_LOG_FORMAT",
        description="json: one JSON object per line (what log shippers read); console: "
        "aligned lines for a person; auto: console when stderr is a terminal, else json.",
    )

    @field_validator("webhook_max_concurrency", "webhook_max_per_second", mode="before")
    @classmethod
    def _empty_is_unlimited(cls, value: object) -> object:
        # A variable set to nothing (VAR= in a compose or env file) means what leaving it out
        # does: no limit.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not value.startswith(("postgres://", "postgresql", "sqlite")):
            raise ValueError("must start with postgresql://, postgresql+psycopg:// or sqlite:///")
        sqlalchemy_database_url(value)  # one host or several: the hosts and ports make sense
        return value

    @field_validator("redis_url")
    @classmethod
    def _known_redis(cls, value: str) -> str:
        if value.startswith(SENTINEL_SCHEMES):
            parse_sentinel_url(value)
        elif not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "must start with redis://, rediss://, unix://, redis+sentinel:// or "
                "rediss+sentinel://"
            )
        return value

    @field_validator("rate_limit", "auth_failure_limit")
    @classmethod
    def _valid_rate_limit(cls, value: str) -> str:
        if value:
            from limits import parse_many

            try:
                parse_many(value)
            except ValueError:
                raise ValueError("not a rate limit such as '600/minute' or '10/second'") from None
        return value

    @field_validator("webhook_url")
    @classmethod
    def _http_webhook(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("secret_key")
    @classmethod
    def _fernet_keys(cls, value: str) -> str:
        if value:
            from cryptography.fernet import Fernet

            for key in value.split(","):
                try:
                    Fernet(key.strip())
                except (ValueError, TypeError):
                    raise ValueError(
                        "not a Fernet key (32 url-safe base64-encoded bytes; make one with "
                        "`reminders secret-key`)"
                    ) from None
        return value

    @field_validator("scan_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from periodiq import cron

        if not value.strip().startswith("@") and len(value.split()) != 5:
            raise ValueError("a cron expression has 5 fields: minute hour day month weekday")
        try:
            spec = cron(value)
        except Exception:  # periodiq raises bare ValueError/IndexError/KeyError
            raise ValueError("not a cron expression") from None
        # periodiq does not check ranges: "61 * * * *" would parse and never fire.
        for values, (low, high) in zip(spec.astuple(), CRON_RANGES, strict=True):
            if not values or min(values) < low or max(values) > high:
                raise ValueError(f"a cron field is outside {low}-{high}")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        problems = cross_field_problems(
            self.webhook_url,
            self.webhook_secret,
            self.min_backoff_ms,
            self.max_backoff_ms,
            self.history_days,
            self.dead_letter_ttl_seconds,
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def redis_sentinel(self) -> SentinelSet | None:
        """The Sentinel set ``REDIS_URL`` names, or None when it names one server."""
        if self.redis_url.startswith(SENTINEL_SCHEMES):
            return parse_sentinel_url(self.redis_url)
        return None

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL: PostgreSQL always through psycopg 3, one host or several
        (`shared.database_url`); SQLite by default."""
        if not self.database_url:
            return f"sqlite:///{(self.data_dir / 'reminders.db').resolve()}"
        return sqlalchemy_database_url(self.database_url)


@dataclass(frozen=True)
class Keepalive:
    """TCP keepalive and user timeout for a peer that may go silent (REMINDERS_PEER_TIMEOUT).

    An idle connection is probed after ``idle`` seconds, then every ``interval``; data sent
    and not acknowledged within ``user_timeout_ms`` (Linux's ``TCP_USER_TIMEOUT``, which
    also ends the probing then) fails the connection. Either way a peer that stops
    answering is given up about ``peer_timeout`` seconds after it last answered.
    """

    idle: int
    interval: int
    count: int
    user_timeout_ms: int


def keepalive_for(peer_timeout: int) -> Keepalive:
    """The keepalive that gives up a silent peer after about ``peer_timeout`` seconds."""
    idle = max(1, peer_timeout // 2)
    interval = max(1, peer_timeout // 10)
    count = max(1, -(-(peer_timeout - idle) // interval))  # ceil: probes up to the timeout
    return Keepalive(idle, interval, count, peer_timeout * 1000)


def cross_field_problems(
    webhook_url: str,
    webhook_secret: str,
    min_backoff_ms: object,
    max_backoff_ms: object,
    history_days: object = None,
    dead_letter_ttl_seconds: object = None,
) -> list[str]:
    """Rules between variables, each problem naming the variables involved."""
    problems = []
    if webhook_url and not webhook_secret:
        problems.append("REMINDERS_WEBHOOK_SECRET is required when REMINDERS_WEBHOOK_URL is set")
    comparable = isinstance(min_backoff_ms, int) and isinstance(max_backoff_ms, int)
    if comparable and min_backoff_ms > max_backoff_ms:  # type: ignore[operator]
        problems.append("REMINDERS_MIN_BACKOFF_MS must not exceed REMINDERS_MAX_BACKOFF_MS")
    kept = isinstance(history_days, int) and isinstance(dead_letter_ttl_seconds, int)
    if kept and history_days * 86400 <= dead_letter_ttl_seconds:  # type: ignore[operator]
        # A purged row would leave a live dead letter with nothing to retry it against.
        problems.append(
            "REMINDERS_HISTORY_DAYS must be longer than REMINDERS_DEAD_LETTER_TTL "
            "(rows are kept while their dead letter can still be retried)"
        )
    return problems


def _as_int(value: str | None, default: int) -> object:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        return None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the settings from ``environ`` (default: the process environment).

    Raises:
        ConfigError: one line per bad variable, each naming it.
    """
    source = dict(os.environ if environ is None else environ)
    known = {str(field.validation_alias) for field in Settings.model_fields.values()}
    values = {key: value for key, value in source.items() if key in known}
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            if not error["loc"]:
                continue  # a cross-field rule: reported below, from the raw values
            name = str(error["loc"][0])
            shown = ""
            if name in values and "SECRET" not in name:
                value = redact_url(values[name]) if name.endswith("_URL") else values[name]
                shown = f"={value!r}"
            lines.append(f"configuration error: {name}{shown}: {error['msg']}")
        # pydantic skips the model-level rules once a field fails; check them anyway.
        defaults = Settings.model_fields
        problems = cross_field_problems(
            values.get("REMINDERS_WEBHOOK_URL", ""),
            values.get("REMINDERS_WEBHOOK_SECRET", ""),
            _as_int(values.get("REMINDERS_MIN_BACKOFF_MS"), defaults["min_backoff_ms"].default),
            _as_int(values.get("REMINDERS_MAX_BACKOFF_MS"), defaults["max_backoff_ms"].default),
            _as_int(values.get("REMINDERS_HISTORY_DAYS"), defaults["history_days"].default),
            _as_int(
                values.get("REMINDERS_DEAD_LETTER_TTL"),
                defaults["dead_letter_ttl_seconds"].default,
            ),
        )
        lines.extend(f"configuration error: {problem}" for problem in problems)
        raise ConfigError("\n".join(lines)) from None


def settings_or_exit() -> Settings:
    """`load_settings`, or the configuration error's lines on stderr and `ExitStatus.CONFIG`.

    What every process does at start.
    """
    try:
        return load_settings()
    except ConfigError as error:
        print(error, file=sys.stderr)
        raise SystemExit(ExitStatus.CONFIG) from None
