"""Hands pending jobs to Celery: one message per job, on its target's queue, in priority order."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any, cast

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.messages import BUILD_TASK, broker_priority, is_redis_broker, queue_name
from common.models import Builder, BuildJob
from common.states import JobState
from master.builds import jobs, liveness

log = logging.getLogger(__name__)

DISPATCH_BATCH = 500


def served_targets(session: Session, builder_timeout: float) -> set[tuple[str, str]]:
    """(target, python tag) pairs that a builder heard from recently has an interpreter
    for."""
    served: set[tuple[str, str]] = set()
    for target, tags in session.execute(
        select(Builder.target, Builder.python_tags).where(
            liveness.online(datetime.now(UTC), builder_timeout)
        )
    ):
        served.update((target, tag) for tag in tags or [])
    return served


def dispatch_pending(
    factory: sessionmaker[Session],
    celery: Celery,
    *,
    queue_depth: int | None = None,
    batch_size: int = DISPATCH_BATCH,
    limit: int | None = None,
    targets: Iterable[tuple[str, str]] | None = None,
) -> int:
    """Send a Celery message for each pending job, highest priority first; returns the count.

    Works in batches per target: one transaction locks a batch of pending rows (SKIP LOCKED,
    so two masters never send the same batch), sends their messages through one producer
    and marks them queued with one UPDATE. The message goes out before the state changes:
    a builder accepts a job that is pending or queued, so a crash between the two only
    leaves jobs to send again.

    Each (target, python tag) has its own queue. With `targets`, only those (the ones an
    online builder has an interpreter for) are sent; the others wait in the database.
    With queue_depth, a queue never has more than that many jobs queued (per master: two
    masters counting at once may each fill the gap). The rest wait in the database, in
    priority order, so a rebuild asked for later still overtakes them on any broker.
    """
    redis_priorities = is_redis_broker(str(celery.conf.broker_url))
    with factory() as session:
        waiting = set(
            session.execute(
                select(BuildJob.target, BuildJob.python_tag)
                .where(BuildJob.state == JobState.PENDING)
                .distinct()
            ).tuples()
        )
    if targets is not None:
        unserved = waiting - set(targets)
        if unserved:
            log.debug(
                "pending jobs wait for a builder",
                extra={"targets": ",".join(f"{a}/{t}" for a, t in sorted(unserved))},
            )
        waiting &= set(targets)
    sent = 0
    for target, tag in sorted(waiting):
        if queue_name(target, tag) not in celery.amqp.queues:
            log.warning(
                "pending jobs for a target that is not configured",
                extra={"target": target, "python_tag": tag},
            )
            continue
        while limit is None or sent < limit:
            want = batch_size if limit is None else min(batch_size, limit - sent)
            count = _dispatch_batch(
                factory, celery, target, tag, want, queue_depth, redis_priorities
            )
            sent += count
            if count < want:
                break
    return sent


def _publish_batch(producer: Any) -> AbstractContextManager[object]:
    batch = getattr(producer, "batch", None)
    return nullcontext() if batch is None else cast(AbstractContextManager[object], batch())


def _dispatch_batch(
    factory: sessionmaker[Session],
    celery: Celery,
    target: str,
    python_tag: str,
    want: int,
    queue_depth: int | None,
    redis_priorities: bool,
) -> int:
    """One batch of one target's queue; returns how many messages went out."""
    queue = queue_name(target, python_tag)
    with factory() as session, session.begin():
        if queue_depth is not None:
            queued = session.scalar(
                select(func.count())
                .select_from(BuildJob)
                .where(
                    BuildJob.state == JobState.QUEUED,
                    BuildJob.target == target,
                    BuildJob.python_tag == python_tag,
                )
            )
            want = min(want, queue_depth - (queued or 0))
            if want <= 0:
                log.debug("queue full", extra={"queue": queue, "queued": queued})
                return 0
        batch = session.execute(
            select(BuildJob.id, BuildJob.priority)
            .where(
                BuildJob.state == JobState.PENDING,
                BuildJob.target == target,
                BuildJob.python_tag == python_tag,
            )
            .order_by(BuildJob.priority.desc(), BuildJob.id)
            .limit(want)
            .with_for_update(skip_locked=True)
        ).all()
        if not batch:
            return 0
        # One pooled connection for the batch. On Redis, kombu >= 5.7's Producer.batch() sends
        # the pushes as one pipeline when it exits, before the UPDATE below (about 3x faster
        # here); older kombu, and the SQLAlchemy transport, publish one by one.
        with celery.producer_or_acquire() as producer, _publish_batch(producer):
            # Declared once here rather than once per message; argsrepr saves a saferepr().
            producer.maybe_declare(celery.amqp.queues[queue])
            for job_id, priority in batch:
                celery.send_task(
                    BUILD_TASK,
                    args=[job_id],
                    queue=queue,
                    priority=broker_priority(priority) if redis_priorities else None,
                    producer=producer,
                    declare=[],
                    argsrepr=f"[{job_id}]",
                    kwargsrepr="{}",
                )
        # A builder may have claimed one already (a duplicate message): leave that one be.
        jobs.queue_batch(session, [job_id for job_id, _ in batch], queue)
    log.info(
        "jobs queued",
        extra={
            "count": len(batch),
            "queue": queue,
            "first_job_id": batch[0][0],
            "top_priority": batch[0][1],
        },
    )
    return len(batch)
