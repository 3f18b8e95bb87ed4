"""`python -m events`: runs the consumer groups and the job sweeper until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import redis

from events.process import audit_chain
from events.process.audit_chain import GROUP as AUDIT_GROUP
from events.process.audit_chain import AuditChain
from events.process.consumer import ConsumerGroup
from events.process.ledger import BATCH as LEDGER_BATCH
from events.process.ledger import GROUP as LEDGER_GROUP
from events.process.ledger import Ledger
from events.process.lifecycle import GROUP as LIFECYCLE_GROUP
from events.process.lifecycle import LifecycleCounter
from events.process.sweeper import Sweeper
from events.store import keyspace
from events.store.clients import RedisAccessError, check_access, sync_client
from events.telemetry import logs
from settings import Settings

log = logging.getLogger("events")


def sweep_forever(sweeper: Sweeper, stop: threading.Event, every_s: float, retention_s: float) -> None:
    """Run the sweeper every `every_s` seconds and audit retention every minute, riding out Redis outages."""
    last_trim = 0.0
    while not stop.wait(every_s):
        try:
            sweeper.sweep()
            sweeper.recheck_queued()
            sweeper.sweep_holds()
            sweeper.summarise_auth_failures()
            if time.monotonic() - last_trim > 60:
                last_trim = time.monotonic()
                trimmed = audit_chain.trim(sweeper.client, older_than_s=retention_s, now=time.time())
                if trimmed["removed"]:
                    log.info("audit retention removed %d records", trimmed["removed"], extra=trimmed)
                if trimmed.get("broken"):
                    log.error("the audit chain is broken; retention stopped there", extra=trimmed)
        except (redis.ConnectionError, redis.TimeoutError) as ex:
            log.warning("sweeper cannot reach redis: %s", ex)
        except redis.RedisError:  # e.g. OOM or READONLY: this pass failed, the next one may not (never end the thread)
            log.exception("sweeper pass failed")


def main() -> None:
    """Start every consumer group and the sweeper, each in its own thread."""
    settings = Settings.from_env()
    logs.setup(settings.log_level)
    client = sync_client(settings.redis, socket_timeout=10)
    try:
        check_access(client)  # wrong credentials or an untrusted certificate: stop now, waiting will not mend them
    except RedisAccessError as ex:
        log.error("cannot start: %s", ex)
        raise SystemExit(1) from None
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    groups = [
        ConsumerGroup(
            client,
            stream,
            group,
            consumer,
            handler,
            batch=batch,
            claim_idle_ms=settings.consumer_claim_idle_ms,
            max_deliveries=settings.consumer_max_deliveries,
        )
        for stream, group, handler, batch in (
            (keyspace.LIFECYCLE_STREAM, LIFECYCLE_GROUP, LifecycleCounter(client), 100),
            (keyspace.USAGE_STREAM, LEDGER_GROUP, Ledger(client), LEDGER_BATCH),  # summed per batch: larger is cheaper
            (keyspace.AUDIT_STREAM, AUDIT_GROUP, AuditChain(client), 100),
        )
    ]
    sweeper = Sweeper(
        client,
        settings.queue,
        grace_s=settings.lease_s,
        job_ttl_s=settings.job_ttl_s,
        stream_ttl_s=settings.stream_ttl_s,
        hold_ttl_s=settings.hold_ttl_s,
        auth_window_s=settings.auth_failure_window_s,
        queued_recheck_s=settings.queued_recheck_s,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=g.run, args=(stop,), name=f"group-{g.group}") for g in groups]
    threads.append(
        threading.Thread(
            target=sweep_forever,
            name="sweeper",
            args=(sweeper, stop, settings.heartbeat_s, settings.audit_retention_days * 86400),
        )
    )
    for thread in threads:
        thread.start()
    log.info("events process started", extra={"consumer": consumer, "groups": [g.group for g in groups]})
    stop.wait()
    for thread in threads:
        thread.join(timeout=5)
    log.info("events process stopped")


if __name__ == "__main__":
    main()
