"""The Dramatiq actors and the middleware that records failed attempts.

`declare_actors` binds ``send_reminder`` and ``scan_due_tasks`` to a broker and a
`Pipeline` (database sessions, channel, settings); ``workers.app`` calls it once for the
``dramatiq`` and ``periodiq`` command lines, tests call it with their own broker.

Retries are Dramatiq's Retries middleware, configured from settings (``shared.broker.queue``):
every exception retries with exponential backoff and jitter except
`PermanentDeliveryError`, which is in the actor's ``throws`` and dead-letters at once.

An expected delivery failure is logged once, as ``reminder.retrying`` or
``reminder.dead_lettered`` (`RecordFailedAttempts`); Dramatiq's own lines about the same
attempt are dropped (`DramatiqAttemptLines`), and only an unexpected error keeps Dramatiq's
"unhandled exception" line with its traceback.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dramatiq
import redis
from dramatiq import Middleware
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Retries, TimeLimit
from periodiq import cron
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.broker.gate import RESERVED_SLOT, WOKEN_FOR, Gate, Verdict, endpoint_receiver
from shared.broker.queue import (
    QUEUE_NAME,
    SCAN_DUE_TASKS,
    SCAN_QUEUE_NAME,
    SEND_REMINDER,
    broker_down,
)
from shared.broker.redis_broker import ENDPOINT
from shared.config import Settings
from shared.delivery.endpoints import purge_attempts
from shared.logs import get_logger
from shared.ops.activity import record_dead_letters, record_retry, sample_queue_depth
from shared.planning.rules import describe_error
from shared.store.db import database_unreachable, utcnow
from shared.store.housekeeping import purge_expired_idempotency_keys, purge_history
from workers import metrics
from workers.admission import Deferred
from workers.channels import Channel, PermanentDeliveryError
from workers.delivery import Outcome, deliver_occurrence, parse_occurrence, record_failed_attempt
from workers.endpoint_channel import EndpointChannel
from workers.outage import DatabaseGate
from workers.producer import scan_due_tasks
from workers.ticks import LateTicks

log = get_logger("worker")


@dataclass(frozen=True)
class Pipeline:
    """What the actors need: the database, the delivery channel and the settings."""

    sessions: sessionmaker[Session]
    channel: Channel
    settings: Settings
    # Users' endpoints; None: every reminder goes through ``channel``.
    endpoints: EndpointChannel | None = None
    # The receivers' limits (SPEC §4.9): swept on every scan. None: no limits anywhere.
    gate: Gate | None = None

    @property
    def engine(self) -> Engine:
        engine = self.sessions.kw["bind"]
        assert isinstance(engine, Engine)
        return engine


# Reminders of the slow lane woken on each scan, should no slow-lane thread be left to wake
# them (every process that held one killed).
SWEEP_SLOW_LANE = 4

HOUSEKEEPING = "housekeeping"
HOUSEKEEPING_CRON = "17 * * * *"  # hourly, off the top of the hour


@dataclass(frozen=True)
class Actors:
    send_reminder: dramatiq.Actor[Any, Any]
    scan_due_tasks: dramatiq.Actor[Any, Any]
    housekeeping: dramatiq.Actor[Any, Any]


class RecordFailedAttempts(Middleware):
    """Keeps each failed attempt of ``send_reminder`` on its reminder row.

    Runs after Retries has decided (it is added before Retries, and ``after_*`` hooks run
    in reverse order), so ``message.failed`` tells a dead letter from a retry. The final
    attempt's error is recorded here because Dramatiq's dead-letter entry holds only the
    traceback of the attempt before it.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._delays = threading.local()

    def after_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        # Retries re-enqueues with a delay from this same worker thread: remember it for the log.
        if delay is not None and message.actor_name == SEND_REMINDER:
            self._delays.value = (message.message_id, delay)

    def _count_retry(self, broker: Any, error_type: str) -> None:
        metrics.RETRIED.labels(error_type).inc()
        # The ops page's retries per minute; best effort, it never fails the attempt, nor
        # holds up the middleware after it (the database gate) waiting on a lost Redis.
        if not broker_down(broker):
            record_retry(broker.client, self.pipeline.settings.redis_namespace, utcnow())

    def _count_dead_letter(self, broker: Any, error_type: str) -> None:
        metrics.DEAD_LETTERED.labels(error_type).inc()
        # The ops page's dead letters per minute, kept as they happen: an operator's retry
        # later does not take one back. Best effort, as retries above.
        if not broker_down(broker):
            record_dead_letters(broker.client, self.pipeline.settings.redis_namespace, utcnow())

    def after_process_message(
        self,
        broker: Any,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or message.actor_name != SEND_REMINDER:
            return
        delay_ms = None
        remembered = getattr(self._delays, "value", None)
        if remembered and remembered[0] == message.message_id:
            delay_ms = remembered[1]
        self._delays.value = None
        error_type = type(exception).__name__
        fields = {
            "message_id": message.message_id,
            "task_id": message.args[0] if message.args else None,
            "error_type": error_type,
            "error": describe_error(exception),
        }
        if database_unreachable(exception):
            # Not the reminder's failure, and nowhere to record it: put back uncounted.
            self._count_retry(broker, error_type)
            log.warning("reminder.retrying", delay_ms=delay_ms, counted=False, **fields)
            return
        try:
            named = parse_occurrence(message.message_id, *message.args)
        except (PermanentDeliveryError, TypeError):
            # No row to record on; a wrong number of arguments is retried like any TypeError,
            # so only the final attempt is the dead letter.
            if message.failed:
                self._count_dead_letter(broker, error_type)
                log.error("reminder.dead_lettered", reason="malformed message", **fields)
            else:
                self._count_retry(broker, error_type)
                log.warning(
                    "reminder.retrying", reason="malformed message", delay_ms=delay_ms, **fields
                )
            return
        recorded = record_failed_attempt(
            self.pipeline.sessions, named, exception, final=message.failed
        )
        attempt = recorded.attempts if recorded else message.options.get("retries", 0)
        if message.failed:
            self._count_dead_letter(broker, error_type)
            log.error("reminder.dead_lettered", attempt=attempt, **fields)
        else:
            self._count_retry(broker, error_type)
            log.warning("reminder.retrying", attempt=attempt, delay_ms=delay_ms, **fields)


class DramatiqAttemptLines(logging.Filter):
    """Drops Dramatiq's own log lines about a failed attempt.

    ``RecordFailedAttempts`` already logs each failed attempt as one event with the
    reminder's identifiers; Dramatiq's "Retrying message …", "Retries exceeded …",
    "Aborting message …" and "… with expected exception …" lines would say it again in
    free text, as would its "unhandled exception" line for an attempt that met a database
    outage. That line is kept, with its traceback, for any other (unexpected) error.
    """

    TEMPLATES = frozenset(
        {
            "Retrying message %r in %d milliseconds.",
            "Retries exceeded for message %r.",
            "Aborting message %r.",
            "Failed to process message %s with expected exception %s.",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self.TEMPLATES:
            return False
        # A database outage is expected too: ``database.unavailable`` and one
        # ``reminder.retrying`` per held attempt say it, without a traceback each.
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not database_unreachable(error)


_ATTEMPT_LINES = DramatiqAttemptLines()


def put_back_for(broker: RedisBroker, message: Any, wait: timedelta) -> None:
    """Enqueue ``message`` again, delayed by ``wait``: it arrived before its remind time.

    ``wait`` is measured on the clock that found it early (the database server's), not this
    host's: a host whose clock runs ahead would otherwise put it back too briefly, again and
    again. The copy keeps the message's options (its retry count among them): arriving early
    is no failure. The original is then acknowledged as usual.
    """
    delay_ms = max(0, math.ceil(wait.total_seconds() * 1000))
    broker.enqueue(message.copy(), delay=delay_ms)
    log.info(
        "reminder.early",
        message_id=message.message_id,
        task_id=message.args[0],
        delay_ms=delay_ms,
    )


def put_back_deferred(broker: RedisBroker, message: Any, deferred: Deferred) -> None:
    """A reminder its receiver's limits hold back: parked in the gate already, or enqueued
    again here, delayed to its rate slot or to the end of the receiver's back-off. Its
    options (retry count among them) are kept: being held back is no attempt."""
    admission = deferred.admission
    if admission.verdict is not Verdict.PARKED:
        copy = message.copy()
        copy.options.pop(RESERVED_SLOT, None)
        if admission.verdict is Verdict.RATE:
            copy.options[RESERVED_SLOT] = admission.until_ms
        # The delay as the gate measured it, on Redis' clock: this host's may differ.
        broker.enqueue(copy, delay=admission.delay_ms)
    log.debug(
        "reminder.deferred",
        message_id=message.message_id,
        receiver=deferred.receiver,
        reason="slow_lane" if admission.slow else admission.verdict.value,
        until_ms=admission.until_ms or None,
    )


def parked_at_once(gate: Gate, message: dramatiq.Message[Any]) -> bool:
    """Park ``message`` without opening a transaction if the endpoint it was enqueued for is
    full (`Gate.park_if_full`): a flood to one endpoint is then parked at the speed of Redis,
    and another user's reminder queued behind it waits that much less. False: deliver as
    usual (its endpoint unknown, with room, or Redis failing: the delivery decides)."""
    endpoint = message.options.get(ENDPOINT)
    if not endpoint:
        return False
    receiver = endpoint_receiver(endpoint)
    try:
        parked = gate.park_if_full(receiver, message)
    except redis.RedisError:
        return False
    if parked:
        metrics.DEFERRED.labels(Verdict.PARKED.value).inc()
        log.debug(
            "reminder.deferred", message_id=message.message_id, receiver=receiver, reason="parked"
        )
    return parked


def forfeit(gate: Gate, receiver: str, token: str) -> None:
    """Give back a slot reserved for a woken message that will not use it; best effort (the
    reservation lapses on its own)."""
    try:
        gate.release(receiver, token, duration_ms=-1)
    except redis.RedisError as exc:
        log.warning("gate.release_failed", receiver=receiver, error_type=type(exc).__name__)


def declare_actors(broker: RedisBroker, pipeline: Pipeline) -> Actors:
    """Bind the actors and the failure middleware to ``broker``."""
    broker.add_middleware(RecordFailedAttempts(pipeline), before=Retries)
    broker.add_middleware(DatabaseGate(pipeline.engine), before=TimeLimit)
    logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_ATTEMPT_LINES)
    for middleware in broker.middleware:
        if isinstance(middleware, Retries):
            middleware.logger.addFilter(_ATTEMPT_LINES)
    # A late tick runs, unless a later one has run already (periodiq would drop it).
    settings = pipeline.settings
    broker.add_middleware(LateTicks(broker.client, settings.redis_namespace))
    # The labelled counter of this channel, looked up once rather than per reminder.
    sent_here = metrics.SENT.labels(pipeline.channel.name)

    def send_reminder(task_id: str, due_at: str) -> None:
        """Deliver one reminder exactly once (see ``workers.delivery``)."""
        message = dramatiq.middleware.CurrentMessage.get_current_message()
        if message is None:
            raise PermanentDeliveryError("malformed message: no message ID")
        named = parse_occurrence(message.message_id, task_id, due_at)
        if pipeline.gate is not None and parked_at_once(pipeline.gate, message):
            return
        try:
            delivery = deliver_occurrence(
                pipeline.engine,
                pipeline.channel,
                named,
                carried=message.options,
                endpoints=pipeline.endpoints,
                message=message,
            )
        except Deferred as deferred:
            put_back_deferred(broker, message, deferred)
            return
        fields = {"task_id": task_id, "message_id": message.message_id}
        if delivery.outcome is Outcome.SENT:
            assert delivery.sent_at is not None and delivery.remind_at is not None
            lateness = (delivery.sent_at - delivery.remind_at).total_seconds()
            by_channel = delivery.channel == pipeline.channel.name
            (sent_here if by_channel else metrics.SENT.labels(delivery.channel)).inc()
            metrics.LATENESS_SECONDS.observe(max(lateness, 0.0))
            if not (by_channel and pipeline.channel.announces_delivery):
                log.info(
                    "reminder.sent",
                    channel=delivery.channel,
                    attempt=delivery.attempts,
                    late=delivery.late,
                    lateness_ms=round(lateness * 1000),
                    **fields,
                )
        elif delivery.outcome is Outcome.DUPLICATE:
            metrics.DUPLICATES.inc()
            log.info("reminder.duplicate_suppressed", **fields)
        elif delivery.outcome is Outcome.EARLY:
            assert delivery.wait is not None
            put_back_for(broker, message, delivery.wait)
        else:
            metrics.STALE.inc()
            log.info("reminder.stale", state=delivery.state, **fields)
        woken_for = message.options.get(WOKEN_FOR)
        if delivery.outcome is not Outcome.SENT and woken_for and pipeline.gate is not None:
            # Woken with a slot reserved, it made no request: the slot goes to the next one
            # waiting now, not when the reservation lapses.
            forfeit(pipeline.gate, woken_for, message.message_id)

    def scan() -> None:
        """The producer, as run by the scheduler (periodiq) on REMINDERS_SCAN_CRON."""
        result = scan_due_tasks(pipeline.sessions, broker, settings)
        metrics.SCAN_SECONDS.observe(result.seconds)
        metrics.ENQUEUED.labels("due").inc(result.enqueued)
        metrics.ENQUEUED.labels("requeued").inc(result.requeued)
        metrics.MISSED.inc(result.missed)
        # The ops page's queue depth and dead letters per minute; best effort, they never
        # fail the scan.
        sample_queue_depth(broker, settings.redis_namespace, utcnow())
        if pipeline.gate is not None:
            # What a SIGKILLed worker's expired leases left waiting, and the slow lane.
            pipeline.gate.sweep(slow_wake=SWEEP_SLOW_LANE)
        record_dead_letters(
            broker.client, settings.redis_namespace, utcnow(), result.repaired_failed
        )

    def housekeeping() -> None:
        """Purge expired Idempotency-Keys (kept at least 24 hours), reminder history older
        than REMINDERS_HISTORY_DAYS and endpoint attempts older than
        REMINDERS_ENDPOINT_ATTEMPTS_DAYS."""
        now = utcnow()
        purged = purge_expired_idempotency_keys(pipeline.sessions, now)
        history = purge_history(pipeline.sessions, now, settings.history_days)
        attempts = purge_attempts(
            pipeline.engine, timedelta(days=settings.endpoint_attempts_days), lambda: now
        )
        log.info(
            "housekeeping.finished",
            idempotency_keys_purged=purged,
            reminders_purged=history,
            endpoint_attempts_purged=attempts,
        )

    return Actors(
        send_reminder=dramatiq.actor(
            actor_name=SEND_REMINDER,
            queue_name=QUEUE_NAME,
            broker=broker,
            throws=(PermanentDeliveryError,),
            max_retries=settings.max_retries,
            min_backoff=settings.min_backoff_ms,
            max_backoff=settings.max_backoff_ms,
            # A hung delivery is interrupted; the webhook's own timeout is the first line.
            time_limit=int(max(60, settings.webhook_timeout_seconds * 4) * 1000),
        )(send_reminder),
        scan_due_tasks=dramatiq.actor(
            actor_name=SCAN_DUE_TASKS,
            queue_name=SCAN_QUEUE_NAME,
            broker=broker,
            periodic=cron(settings.scan_cron),
            # A failed scan is not retried: the next tick rescans everything.
            max_retries=0,
        )(scan),
        housekeeping=dramatiq.actor(
            actor_name=HOUSEKEEPING,
            queue_name=SCAN_QUEUE_NAME,
            broker=broker,
            periodic=cron(HOUSEKEEPING_CRON),
            max_retries=0,
        )(housekeeping),
    )
