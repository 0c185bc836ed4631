"""Prometheus metrics of the pipeline (SPEC §9), recorded by the worker processes.

Under ``reminders worker`` they are written to a multiprocess directory and served, with
Dramatiq's own message metrics, on ``REMINDERS_METRICS_PORT``. Labels are low-cardinality
names only; never a task, a title or an owner.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SENT = Counter("reminders_sent_total", "Reminders delivered and recorded sent.", ["channel"])
DUPLICATES = Counter(
    "reminders_duplicate_suppressed_total",
    "Messages for an occurrence already sent, acknowledged without delivering.",
)
STALE = Counter(
    "reminders_stale_total", "Messages for an occurrence no longer wanted (task changed)."
)
RETRIED = Counter(
    "reminders_retried_total", "Failed attempts that will be retried.", ["error_type"]
)
DEAD_LETTERED = Counter(
    "reminders_dead_lettered_total", "Occurrences that failed for good.", ["error_type"]
)
MISSED = Counter("reminders_missed_total", "Occurrences older than the catch-up window.")
ENQUEUED = Counter("reminders_enqueued_total", "Messages enqueued by the producer.", ["reason"])
SCAN_SECONDS = Histogram(
    "reminders_scan_duration_seconds",
    "Duration of one producer run.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LATENESS_SECONDS = Histogram(
    "reminders_lateness_seconds",
    "sent_at - remind_at of each sent reminder.",
    # Fine below a second (reminders are released at their remind time), coarse after downtime.
    buckets=(
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        0.75,
        1,
        1.5,
        2,
        5,
        10,
        30,
        60,
        300,
        900,
        3600,
        86400,
    ),
)
ENDPOINT_ATTEMPTS = Counter(
    "reminders_endpoint_attempts_total",
    "Requests to users' endpoints by outcome: accepted (2xx), transient (will be retried), "
    "rejected (4xx or a refused address), disabled (not sent: the endpoint is disabled).",
    ["outcome"],
)
ENDPOINTS_DISABLED = Counter(
    "reminders_endpoints_disabled_total",
    "Endpoints disabled after failing for REMINDERS_ENDPOINT_DISABLE_AFTER.",
)
DEFERRED = Counter(
    "reminders_deferred_total",
    "Reminders held back by their receiver's limits, not sent and not counted as an attempt: "
    "parked (concurrency full), slow_lane (its threads busy), rate (delayed to a rate slot), "
    "backing_off (the receiver's Retry-After).",
    ["reason"],
)
THROTTLED = Counter(
    "reminders_throttled_total",
    "Answers 429 or 503 from a receiver (its Retry-After, if any, defers its reminders).",
)
