"""Configuration from the environment: defaults, and one clear line per bad variable."""

from __future__ import annotations

from pathlib import Path

import pendulum
import pytest
from periodiq import cron

from cli.processes import worker_env
from shared.config import ConfigError, load_settings

SECRET = "whsec-Zq9-do-not-print-me"


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    return str(caught.value)


def test_empty_environment_gives_the_documented_defaults() -> None:
    settings = load_settings({})

    assert settings.max_retries == 3
    assert settings.min_backoff_ms == 1000
    assert settings.max_backoff_ms == 300_000
    assert settings.catchup_seconds == 3600
    assert settings.remind_before_seconds == 86400
    assert settings.webhook_url == ""
    assert settings.min_recurrence_seconds == 3600
    assert settings.horizon_seconds == 86400
    assert settings.history_days == 90


def test_the_deployment_webhook_has_no_delivery_limits_unless_set() -> None:
    settings = load_settings({})

    assert (settings.webhook_max_concurrency, settings.webhook_max_per_second) == (None, None)


@pytest.mark.parametrize(
    ("concurrency", "per_second", "limits"),
    [
        ("4", "0.5", (4, 0.5)),
        ("1", "20", (1, 20.0)),
        ("", " ", (None, None)),  # set to nothing, as an env file writes it: no limit
    ],
)
def test_the_deployment_webhook_limits_are_read_from_the_environment(
    concurrency: str, per_second: str, limits: tuple[int | None, float | None]
) -> None:
    settings = load_settings(
        {
            "REMINDERS_WEBHOOK_MAX_CONCURRENCY": concurrency,
            "REMINDERS_WEBHOOK_MAX_PER_SECOND": per_second,
        }
    )

    assert (settings.webhook_max_concurrency, settings.webhook_max_per_second) == limits


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("REMINDERS_WEBHOOK_MAX_CONCURRENCY", "0", "greater than or equal to 1"),
        ("REMINDERS_WEBHOOK_MAX_CONCURRENCY", "-2", "greater than or equal to 1"),
        ("REMINDERS_WEBHOOK_MAX_CONCURRENCY", "1.5", "a valid integer"),
        ("REMINDERS_WEBHOOK_MAX_CONCURRENCY", "many", "a valid integer"),
        ("REMINDERS_WEBHOOK_MAX_PER_SECOND", "0", "greater than 0"),
        ("REMINDERS_WEBHOOK_MAX_PER_SECOND", "-0.5", "greater than 0"),
        ("REMINDERS_WEBHOOK_MAX_PER_SECOND", "fast", "a valid number"),
        ("REMINDERS_WEBHOOK_MAX_PER_SECOND", "inf", "a finite number"),
        ("REMINDERS_WEBHOOK_MAX_PER_SECOND", "nan", "a finite number"),
    ],
)
def test_a_bad_deployment_webhook_limit_is_named_with_its_value_and_why(
    variable: str, value: str, reason: str
) -> None:
    [line] = config_error({variable: value}).splitlines()

    assert line.startswith(f"configuration error: {variable}={value!r}: ")
    assert reason in line


@pytest.mark.parametrize(
    ("environ", "prefetch"), [({}, "32"), ({"REMINDERS_PREFETCH_PER_THREAD": "3"}, "24")]
)
def test_a_worker_group_fetches_ahead_its_threads_times_the_prefetch_per_thread(
    environ: dict[str, str], prefetch: str
) -> None:
    """What each worker process of ``reminders worker --threads 8`` may fetch ahead of its
    threads: all a slow or cut-off process holds back from the others."""
    env = worker_env(load_settings(environ), {}, threads=8)

    assert env["dramatiq_queue_prefetch"] == prefetch


def test_default_scan_runs_every_minute() -> None:
    schedule = cron(load_settings({}).scan_cron)
    start = pendulum.datetime(2030, 3, 31, 0, 0, tz="UTC")

    assert all(schedule.validate(start.add(minutes=i)) for i in range(24 * 60))


def test_environment_values_are_read_by_variable_name() -> None:
    settings = load_settings(
        {
            "REMINDERS_MAX_RETRIES": "7",
            "REMINDERS_CATCHUP": "60",
            "REMINDERS_REMIND_BEFORE_SECONDS": "120",
            "REDIS_URL": "redis://cache:6380/2",
            "UNRELATED_VARIABLE": "ignored",
        }
    )

    assert settings.max_retries == 7
    assert settings.catchup_seconds == 60
    assert settings.remind_before_seconds == 120
    assert settings.redis_url == "redis://cache:6380/2"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"REMINDERS_MAX_RETRIES": "abc"}, "REMINDERS_MAX_RETRIES"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REMINDERS_SCAN_CRON": "nonsense"}, "REMINDERS_SCAN_CRON"),
        ({"REMINDERS_WEBHOOK_URL": "https://hooks.example/r"}, "REMINDERS_WEBHOOK_SECRET"),
        (
            {"REMINDERS_MIN_BACKOFF_MS": "5000", "REMINDERS_MAX_BACKOFF_MS": "1000"},
            "REMINDERS_MIN_BACKOFF_MS",
        ),
        ({"REMINDERS_REMIND_BEFORE_SECONDS": "59"}, "REMINDERS_REMIND_BEFORE_SECONDS"),
        ({"REMINDERS_MIN_RECURRENCE_SECONDS": "0"}, "REMINDERS_MIN_RECURRENCE_SECONDS"),
        ({"REMINDERS_HORIZON": "60"}, "REMINDERS_HORIZON"),
        ({"REMINDERS_HISTORY_DAYS": "7"}, "REMINDERS_HISTORY_DAYS"),
        ({"REMINDERS_LOG_FORMAT": "xml"}, "REMINDERS_LOG_FORMAT"),
        ({"REMINDERS_PREFETCH_PER_THREAD": "0"}, "REMINDERS_PREFETCH_PER_THREAD"),
        ({"REMINDERS_PREFETCH_PER_THREAD": "some"}, "REMINDERS_PREFETCH_PER_THREAD"),
        ({"REMINDERS_HEARTBEAT_TIMEOUT_MS": "500"}, "REMINDERS_HEARTBEAT_TIMEOUT_MS"),
    ],
)
def test_bad_variable_is_named_in_the_error(environ: dict[str, str], variable: str) -> None:
    assert variable in config_error(environ)


def test_webhook_without_secret_names_both_variables() -> None:
    message = config_error({"REMINDERS_WEBHOOK_URL": "https://hooks.example/r"})

    assert "REMINDERS_WEBHOOK_URL" in message
    assert "REMINDERS_WEBHOOK_SECRET" in message


def test_backoff_bounds_in_the_wrong_order_name_both_variables() -> None:
    message = config_error({"REMINDERS_MIN_BACKOFF_MS": "5000", "REMINDERS_MAX_BACKOFF_MS": "1000"})

    assert "REMINDERS_MIN_BACKOFF_MS" in message
    assert "REMINDERS_MAX_BACKOFF_MS" in message


def test_history_no_longer_than_the_dead_letter_ttl_names_both_variables() -> None:
    message = config_error(
        {"REMINDERS_HISTORY_DAYS": "10", "REMINDERS_DEAD_LETTER_TTL": str(10 * 86400)}
    )

    assert "REMINDERS_HISTORY_DAYS" in message
    assert "REMINDERS_DEAD_LETTER_TTL" in message
    assert load_settings({"REMINDERS_HISTORY_DAYS": "11", "REMINDERS_DEAD_LETTER_TTL": "864000"})


def test_two_bad_variables_are_both_named_on_their_own_lines() -> None:
    message = config_error({"REMINDERS_MAX_RETRIES": "abc", "REDIS_URL": "http://x"})

    lines = message.splitlines()
    assert len(lines) == 2
    assert any("REMINDERS_MAX_RETRIES" in line for line in lines)
    assert any("REDIS_URL" in line for line in lines)


def test_bad_value_and_missing_webhook_secret_are_both_reported() -> None:
    message = config_error(
        {"REMINDERS_MAX_RETRIES": "abc", "REMINDERS_WEBHOOK_URL": "https://hooks.example/r"}
    )

    assert "REMINDERS_MAX_RETRIES" in message
    assert "REMINDERS_WEBHOOK_SECRET" in message


def test_cron_with_an_out_of_range_minute_is_rejected() -> None:
    assert "REMINDERS_SCAN_CRON" in config_error({"REMINDERS_SCAN_CRON": "61 * * * *"})


@pytest.mark.parametrize(
    "environ",
    [
        {"REMINDERS_WEBHOOK_URL": "ftp://hooks.example/r", "REMINDERS_WEBHOOK_SECRET": SECRET},
        {
            "REMINDERS_WEBHOOK_URL": "https://hooks.example/r",
            "REMINDERS_WEBHOOK_SECRET": SECRET,
            "REMINDERS_WEBHOOK_TIMEOUT": "0",
        },
        {"REMINDERS_WEBHOOK_SECRET": SECRET, "REMINDERS_MAX_RETRIES": "abc"},
        {
            "REMINDERS_WEBHOOK_SECRET": SECRET,
            "REMINDERS_MIN_BACKOFF_MS": "9",
            "REMINDERS_MAX_BACKOFF_MS": "1",
        },
    ],
)
def test_webhook_secret_never_appears_in_the_error(environ: dict[str, str]) -> None:
    assert SECRET not in config_error(environ)


def test_webhook_secret_is_not_shown_in_the_settings_repr() -> None:
    settings = load_settings(
        {"REMINDERS_WEBHOOK_URL": "https://hooks.example/r", "REMINDERS_WEBHOOK_SECRET": SECRET}
    )

    assert settings.webhook_secret == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("postgresql://u:p@db:5432/app", "postgresql+psycopg://u:p@db:5432/app"),
        ("postgres://u:p@db:5432/app", "postgresql+psycopg://u:p@db:5432/app"),
        ("postgresql+psycopg://u@db/app", "postgresql+psycopg://u@db/app"),
        ("sqlite:////var/lib/reminders.db", "sqlite:////var/lib/reminders.db"),
    ],
)
def test_database_url_always_uses_psycopg_for_postgresql(given: str, resolved: str) -> None:
    assert load_settings({"DATABASE_URL": given}).resolved_database_url == resolved


def test_no_database_url_means_a_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"REMINDERS_DATA_DIR": str(tmp_path)})

    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'reminders.db'}"
