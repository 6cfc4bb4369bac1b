"""Celery wiring shared by master (sender) and builder (worker): names, queues, settings.

Tasks carry only a job id; the builder asks the master for the rest, so a stale
message can never build something the database no longer wants.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random

from common.config import Settings
from common.states import ARCHES

BUILD_TASK = "armwheels.build"


# kombu emulates priorities on Redis with one list per step; the worker polls the lists in
# step order, so step 0 is served first. Every step gets its own list: the database's
# priorities (1, 5, 9) stay distinct in the broker.
REDIS_PRIORITY_STEPS: list[int] = list(range(10))


def queue_name(target: str, python_tag: str) -> str:
    """One queue per target interpreter: a builder consumes only its target's queues of
    the tags its image has. A target named after its arch keeps build.<arch>.<tag>."""
    return f"build.{target}.{python_tag}"


def configured_queues(settings: Settings) -> list[str]:
    """Every configured target's queues, in the order of ARCHES and then of names."""
    return [
        queue_name(name, tag)
        for arch in ARCHES
        for name in settings.targets_of(arch, enabled=False)
        for tag in settings.targets[name].python_tags
    ]


def is_sqlalchemy_broker(url: str) -> bool:
    return url.startswith(("sqla+", "sqlalchemy+"))


def is_redis_broker(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://"))


def broker_priority(priority: int) -> int:
    """Redis's priority for a database priority: 9 is most urgent there, 0 on Redis."""
    return 9 - min(max(priority, 0), 9)


def make_celery(settings: Settings) -> Celery:
    app = Celery("armwheels", broker=settings.broker.url, set_as_current=False)
    hard_limit = settings.builder.build_timeout + 600
    transport_options: dict[str, object] = {}
    if not is_sqlalchemy_broker(settings.broker.url):
        # Redis redelivers an unacknowledged message after this; kombu's SQLAlchemy
        # transport has no such timeout and hands unknown options to create_engine(),
        # so it gets none of these (and has no priorities: its queues are FIFO).
        transport_options["visibility_timeout"] = max(
            settings.broker.visibility_timeout, hard_limit + 600
        )
    if is_redis_broker(settings.broker.url):
        # Sender and worker must agree on these: they name the per-priority lists.
        transport_options["priority_steps"] = REDIS_PRIORITY_STEPS
        transport_options["sep"] = ":"
        transport_options["queue_order_strategy"] = "priority"
    app.conf.update(
        task_queues=[Queue(name) for name in configured_queues(settings)],
        task_default_queue=configured_queues(settings)[0] if settings.targets else "build",
        task_create_missing_queues=False,
        # Hour-long builds: take one message at a time and acknowledge it only when done,
        # so a builder that dies hands its job back to the queue.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=hard_limit,
        task_soft_time_limit=hard_limit - 60,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def declare_queues(app: Celery, names: list[str]) -> None:
    """Create the queues before a worker consumes them. kombu's SQLAlchemy transport makes a
    queue with a get-or-create that races: a master and a builder starting together can
    both insert it, and the loser's worker dies on the unique constraint. Here the loser
    simply finds the row on its next attempt."""
    declare = retry(
        retry=retry_if_exception_type(Exception),
        stop=stop_after_attempt(5),
        wait=wait_random(0.1, 1.0),
        reraise=True,
    )(_declare)
    for name in names:
        declare(app, name)


def _declare(app: Celery, name: str) -> None:
    with app.connection_for_write() as connection:
        Queue(name).bind(connection.default_channel).declare()
