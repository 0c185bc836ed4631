"""The module ``dramatiq`` and ``periodiq`` load: builds the broker and actors from the environment.

Dramatiq's command line imports a module and uses the broker it finds, so this module
reads the environment at import; everything it calls takes its configuration as
arguments. A bad configuration stops the process with one line naming the variable.
"""

from __future__ import annotations

import dramatiq

from shared.broker.queue import make_broker
from shared.broker.reachability import ConsumerOutageLines
from shared.broker.redis_broker import ACK_LINGER_SECONDS
from shared.config import settings_or_exit
from shared.delivery.key_canary import require_one_secret_key
from shared.logs import configure_logging
from shared.store.db import make_engine, make_session_factory
from workers.actors import Pipeline, declare_actors
from workers.admission import make_admissions
from workers.channels import make_channel
from workers.endpoint_channel import make_endpoint_channel
from workers.stop_signals import OneStopPerSender

settings = settings_or_exit()

configure_logging(settings.log_level, settings.log_format)
# Acknowledgements gather for a few milliseconds and go to Redis together, from a thread of
# their own: a worker thread never waits on one.
broker = make_broker(settings, ack_linger_seconds=ACK_LINGER_SECONDS)
if settings.metrics_port:
    from dramatiq.middleware.prometheus import Prometheus

    broker.add_middleware(Prometheus())
# SIGTERM to the whole process group stops the group gracefully, as one to its main process.
broker.add_middleware(OneStopPerSender())
# A lost Redis is logged once (broker.unavailable), not by every consumer thread as it retries.
broker.add_middleware(ConsumerOutageLines())
dramatiq.set_broker(broker)

# Every receiver's limits, kept in the broker's Redis (SPEC §4.9).
admissions = make_admissions(settings, broker)
engine = make_engine(
    settings.resolved_database_url,
    peer_timeout=settings.peer_timeout_seconds,
    pool_pre_ping=False,
    pool_size=0,
)
# A process whose REMINDERS_SECRET_KEY differs from the others' stops here, not at its first
# delivery to an endpoint.
require_one_secret_key(settings, engine)
pipeline = Pipeline(
    # No pre-ping round trip on every checkout: a connection that died since its last use
    # fails that one attempt, which the Retries middleware retries on a fresh connection.
    # No size limit (pool_size=0): each worker thread keeps its own connection. A fixed size
    # below the thread count would close and reopen connections on every message.
    sessions=make_session_factory(engine),
    channel=make_channel(settings, admissions),
    settings=settings,
    endpoints=make_endpoint_channel(settings, engine, admissions=admissions),
    gate=admissions.gate,
)
actors = declare_actors(broker, pipeline)
