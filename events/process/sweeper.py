"""The sweeper: a running job whose lease lapsed (its worker died) runs again as the next attempt, a job queued for
long whose Celery message was lost on its way to a worker gets a new one (and so does a document waiting as long
for its ingestion), budget holds whose job ended or vanished are settled (their spend counted, the rest returned),
and windows of failed authentications that are over become one audit record per address with its count."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from redis.exceptions import WatchError

from events import job_record
from events.documents.records import INGEST_TASK
from events.envelope import text
from events.store import job_scripts, keyspace, user_scripts
from events.store.budget_scripts import settle_hold
from events.store.cache_scripts import release_followers
from events.store.job_scripts import Rechecked, Requeued
from events.store.scripts import Scripts
from events.store.taskmsg import RUN_AGENT_TASK, message_ids, redelivered, task_message

log = logging.getLogger("events.process.sweeper")


RECHECK_BATCH = 20  # queued jobs (and as many documents) looked at per pass, oldest first
RECHECK_DEPTH = 10_000  # queue entries searched from the tail per look (LPOS compares about 10 M a second)
MISSING_CONFIRM_S = 1.0  # a message must be missing on two looks this far apart (one may see it in a worker's hand)


class Sweeper:
    """Finds running jobs without a lease and requeues (or ends) them, one script per job."""

    def __init__(
        self,
        client: Any,
        queue: str,
        *,
        grace_s: float,
        job_ttl_s: int,
        stream_ttl_s: int,
        max_attempts: int = job_record.MAX_ATTEMPTS,
        hold_ttl_s: int = 600,
        auth_window_s: int = 60,
        queued_recheck_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.queue = queue
        self.grace_s = grace_s
        self.job_ttl_s = job_ttl_s
        self.stream_ttl_s = stream_ttl_s
        self.max_attempts = max_attempts
        self.clock = clock
        self.hold_ttl_s = hold_ttl_s
        self.auth_window_s = auth_window_s
        self.queued_recheck_s = queued_recheck_s
        self.scripts = Scripts(client)

    def sweep(self) -> dict[str, int]:
        """One pass; returns how many jobs ended up in each outcome."""
        now = self.clock()
        # Jobs that started less than a grace period ago may not have renewed their lease yet.
        ids = [text(i) for i in self.client.zrangebyscore(keyspace.RUNNING_JOBS, "-inf", now - self.grace_s)]
        outcomes: dict[str, int] = {}
        if not ids:
            return outcomes
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(keyspace.job_lease(job_id))
            pipe.hmget(keyspace.job(job_id), "attempt", "owner")
        replies = pipe.execute()
        for i, job_id in enumerate(ids):
            leased, (attempt, owner) = replies[2 * i], replies[2 * i + 1]
            if leased:
                continue
            attempt_no = int(attempt or 0)
            message = task_message(RUN_AGENT_TASK, [job_id, attempt_no + 1], self.queue, origin="sweeper")
            outcome = self.scripts.run(
                job_scripts.requeue(
                    job_id=job_id,
                    attempt=attempt_no,
                    now=now,
                    message=message,
                    max_attempts=self.max_attempts,
                    queue=self.queue,
                    job_ttl_s=self.job_ttl_s,
                    stream_ttl_s=self.stream_ttl_s,
                )
            )
            outcomes[outcome.value] = outcomes.get(outcome.value, 0) + 1
            if outcome in (Requeued.FAILED, Requeued.CANCELLED) and owner is not None:
                settle_hold(self.scripts, user_id=text(owner), job_id=job_id, now=now)  # ended for good
            if outcome in (Requeued.FAILED, Requeued.CANCELLED):  # identical jobs waiting for it end too
                release_followers(
                    self.scripts, self.client, job_id, now=now, job_ttl_s=self.job_ttl_s, stream_ttl_s=self.stream_ttl_s
                )
            if outcome not in (Requeued.ALIVE, Requeued.CHANGED):
                log.warning("job %s lost its worker on attempt %d: %s", job_id, attempt_no, outcome.value)
        return outcomes

    def recheck_queued(self) -> dict[str, int]:
        """Look for the messages of the oldest jobs queued longer than `queued_recheck_s`; send a new one for each
        job whose message is gone (on two looks). Returns how many jobs had each outcome; the documents waiting as
        long for their ingestion get the same (`recheck_documents`), counted as `document_<outcome>`.

        A worker pops the oldest message first, so a message lost on its way to a worker is always one of the
        oldest: looking at a few of the oldest jobs each pass finds it, and each look is short, since their
        messages (if any) wait near the tail the search starts from. A job whose message is in `unacked` or was
        not found (the list is longer than the search) is looked at again only after another bound.
        """
        now = self.clock()
        outcomes = self._recheck_jobs(now)
        for outcome, count in self.recheck_documents(now).items():
            outcomes[f"document_{outcome}"] = count
        return outcomes

    def _recheck_jobs(self, now: float) -> dict[str, int]:
        due = now - self.queued_recheck_s
        ids = [text(i) for i in self.client.zrangebyscore(keyspace.QUEUED_JOBS, "-inf", due, 0, RECHECK_BATCH)]
        outcomes: dict[str, int] = {}
        if not ids:
            return outcomes
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keyspace.job(job_id), "attempt", "msg_id", "msg_origin", "msg_tag", "lost_at")
        for job_id, fields in zip(ids, pipe.execute(), strict=True):
            attempt, task_id, origin, tag, lost_at = (text(f) if f is not None else None for f in fields)
            if attempt is None or task_id is None or origin is None or tag is None:
                attempt, task_id, origin, tag = "0", "-", "-", "-"  # the job is gone: the script drops it
            number = int(attempt)
            message = task_message(
                RUN_AGENT_TASK, [job_id, number], self.queue, task_id=task_id, origin=origin, delivery_tag=tag
            )
            confirmable = lost_at is not None and now - float(lost_at) >= MISSING_CONFIRM_S
            outcome = self.scripts.run(
                job_scripts.recheck(
                    job_id=job_id,
                    attempt=number,
                    now=now,
                    queue=self.queue,
                    message=message,
                    restored=redelivered(message),
                    depth=RECHECK_DEPTH,
                    confirm_s=MISSING_CONFIRM_S,
                    new_message=task_message(RUN_AGENT_TASK, [job_id, number], self.queue, origin="sweeper")
                    if confirmable
                    else None,
                )
            )
            outcomes[outcome.value] = outcomes.get(outcome.value, 0) + 1
            if outcome is Rechecked.REENQUEUED:
                log.warning(
                    "job %s attempt %d lost its queue message on the way to a worker; sent a new one",
                    job_id,
                    number,
                    extra={"job_id": job_id, "attempt": number},
                )
            if outcome is Rechecked.UNKNOWN:
                break  # one full search per pass at most; the younger jobs' messages wait further in
        return outcomes

    def recheck_documents(self, now: float) -> dict[str, int]:
        """Look for the ingest messages of the oldest documents still processing after `queued_recheck_s` and not
        taken by a worker; send a new one for each document whose message is gone (on two looks), as for jobs.
        Returns how many documents had each outcome."""
        due = now - self.queued_recheck_s
        members = [text(m) for m in self.client.zrangebyscore(keyspace.QUEUED_DOCS, "-inf", due, 0, RECHECK_BATCH)]
        outcomes: dict[str, int] = {}
        for member in members:
            outcome = self._recheck_document(member, now)
            outcomes[outcome.value] = outcomes.get(outcome.value, 0) + 1
            if outcome is Rechecked.REENQUEUED:
                user, _, doc_id = member.partition("\t")
                log.warning(
                    "document %s of %s lost its ingest message on the way to a worker; sent a new one",
                    doc_id,
                    user,
                    extra={"user_id": user, "doc_id": doc_id},
                )
            if outcome is Rechecked.UNKNOWN:
                break  # one full search per pass at most, as for jobs
        return outcomes

    def _recheck_document(self, member: str, now: float) -> Rechecked:
        """recheck.lua's steps for one document, in a transaction that watches its record: a document deleted,
        ingested or looked at by another sweeper meanwhile is left alone (`changed`), and never written back."""
        user, _, doc_id = member.partition("\t")
        doc_key = keyspace.doc(user, doc_id)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(doc_key)
                fields = pipe.hmget(doc_key, "status", "msg_id", "msg_origin", "msg_tag", "lost_at")
                status, task_id, origin, tag, lost_at = (text(f) if f is not None else None for f in fields)
                waiting = pipe.zscore(keyspace.QUEUED_DOCS, member) is not None  # not taken by an ingest yet
                if status != "processing" or not waiting or task_id is None or origin is None or tag is None:
                    pipe.unwatch()
                    self.client.zrem(keyspace.QUEUED_DOCS, member)
                    return Rechecked.GONE
                message = task_message(
                    INGEST_TASK, [user, doc_id], self.queue, task_id=task_id, origin=origin, delivery_tag=tag
                )
                later = False  # looked at again only after another bound
                if pipe.hexists(keyspace.KOMBU_UNACKED, tag):
                    outcome, later = Rechecked.DELIVERED, True
                elif any(
                    pipe.lpos(self.queue, m, rank=-1, maxlen=max(1, RECHECK_DEPTH)) is not None
                    for m in (message, redelivered(message))
                ):
                    outcome = Rechecked.WAITING
                elif pipe.llen(self.queue) > RECHECK_DEPTH:
                    outcome, later = Rechecked.UNKNOWN, True
                else:
                    outcome = Rechecked.MISSING
                pipe.multi()
                if outcome is not Rechecked.MISSING:
                    if lost_at is not None:
                        pipe.hdel(doc_key, "lost_at")
                    if later:
                        pipe.zadd(keyspace.QUEUED_DOCS, {member: now}, xx=True)
                elif lost_at is None:
                    pipe.hset(doc_key, "lost_at", f"{now:.6f}")
                elif now - float(lost_at) >= MISSING_CONFIRM_S:
                    new = task_message(INGEST_TASK, [user, doc_id], self.queue, origin="sweeper")
                    ids = message_ids(new)
                    pipe.rpush(self.queue, new)  # the front of the queue: the document has waited its turn
                    sent = {"msg_id": ids.task_id, "msg_origin": ids.origin, "msg_tag": ids.delivery_tag}
                    pipe.hset(doc_key, mapping=sent)
                    pipe.hdel(doc_key, "lost_at")
                    pipe.zadd(keyspace.QUEUED_DOCS, {member: now})
                    outcome = Rechecked.REENQUEUED
                pipe.execute()
                return outcome
            except WatchError:
                return Rechecked.CHANGED

    def sweep_holds(self, batch: int = 500) -> dict[str, int]:
        """Settle holds past their expiry whose job has ended or is gone; extend those of live jobs."""
        now = self.clock()
        members = [text(m) for m in self.client.zrangebyscore(keyspace.HOLDS_INDEX, "-inf", now, start=0, num=batch)]
        outcomes = {"settled": 0, "extended": 0}
        if not members:
            return outcomes
        pipe = self.client.pipeline(transaction=False)
        for member in members:
            pipe.hget(keyspace.job(member.partition("\t")[2]), "status")
        for member, status in zip(members, pipe.execute(), strict=True):
            user, _, job_id = member.partition("\t")
            if status is not None and text(status) not in job_record.TERMINAL_STATUSES:
                self.client.zadd(keyspace.HOLDS_INDEX, {member: now + self.hold_ttl_s})
                outcomes["extended"] += 1
                continue
            settle_hold(self.scripts, user_id=user, job_id=job_id, now=now)
            outcomes["settled"] += 1
        return outcomes

    def summarise_auth_failures(self) -> int:
        """Turn each finished window of failed authentications into audit records; returns how many were written."""
        now = self.clock()
        current = int(now // self.auth_window_s)
        written = 0
        for raw in self.client.zrangebyscore(keyspace.AUTH_FAILURE_WINDOWS, "-inf", f"({current}"):
            window = int(text(raw))
            written += self.scripts.run(
                user_scripts.summarise_auth_failures(
                    window=window, window_s=self.auth_window_s, now=now, audit_max_len=keyspace.AUDIT_STREAM_MAXLEN
                )
            )
        return written
