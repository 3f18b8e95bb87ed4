"""Every Redis key and stream name, in one place (docs/architecture.md maps them).

One logical database, names by prefix. Every Lua script is given each key it touches in KEYS, so its slots are
known. A job's own keys (its hash, stream and lease) share the job's hash tag and a user's budget keys share the
user's, which is what a later move of job state and budgets onto Redis Cluster needs; the scripts that also
write the shared streams or the Celery queue list would then run on the plain Redis that the broker needs
anyway (kombu has no Cluster transport).
"""

from __future__ import annotations

USAGE_STREAM = "stream:usage"
AUDIT_STREAM = "stream:audit"
AUDIT_STREAM_MAXLEN = 1_000_000  # a buffer before the chain; the chain itself is trimmed by retention
LIFECYCLE_STREAM = "stream:lifecycle"
JOBS_ALL = "jobs:all"
JOB_COUNTS = "stats:jobs"


def job(job_id: str) -> str:
    """Hash holding a job's state."""
    return f"job:{{{job_id}}}"


def job_stream(job_id: str) -> str:
    """The job's own event stream, read by the SSE relay. Its writers announce each append on the channel of the
    same name (_emit.lua knows job streams by the prefix `stream:job:`)."""
    return f"stream:job:{{{job_id}}}"


def job_lease(job_id: str) -> str:
    """Held by the worker running an attempt; it lapses when that worker dies."""
    return f"lease:job:{{{job_id}}}"


def user(user_id: str) -> str:
    """Hash of a user's profile (role, created_at, disabled)."""
    return f"user:{user_id}"


def user_keys(user_id: str) -> str:
    """Set of the key hashes that belong to a user."""
    return f"user:{user_id}:keys"


def user_jobs(user_id: str) -> str:
    """Sorted set of a user's job ids by submit time."""
    return f"user:{user_id}:jobs"


USERS = "users"


def apikey(key_hash: str) -> str:
    """Hash describing one API key, found by the keyed hash of the key."""
    return f"apikey:{key_hash}"


def docs_version(user_id: str) -> str:
    """A counter bumped by every change to a user's documents (upload ready, delete): part of a cache key."""
    return f"docs:{{{user_id}}}:version"


# Documents (events/documents): Redis holds the source of truth; every key of one user shares the hash tag {user}.
DOC_OWNERS = "docs:owners"  # hash: document id -> owner's user id (admins' look-ups)
EMBEDDING_INDEX = "cache:emb:index"  # zset: embedding cache entry -> when it was stored (eviction order)
EMBEDDING_BYTES = "cache:emb:bytes"  # counter: bytes of the embedding cache's entries


def user_docs(user_id: str) -> str:
    """Sorted set of a user's document ids by upload time."""
    return f"docs:{{{user_id}}}:list"


def doc(user_id: str, doc_id: str) -> str:
    """Hash describing one document (name, content type, bytes, status, chunks)."""
    return f"docs:{{{user_id}}}:doc:{doc_id}"


def doc_chunks(user_id: str, doc_id: str) -> str:
    """Hash of a document's chunks: chunk index -> JSON text and sparse vector."""
    return f"docs:{{{user_id}}}:chunks:{doc_id}"


def doc_charges(user_id: str, doc_id: str) -> str:
    """Hash counting what embedding a document cost (charge ids and `cost_micros`) while it is ingested."""
    return f"docs:{{{user_id}}}:charges:{doc_id}"


def doc_upload(user_id: str, doc_id: str) -> str:
    """The uploaded bytes of a document until a worker has ingested them."""
    return f"docs:{{{user_id}}}:upload:{doc_id}"


def embedding(digest: str) -> str:
    """One cached embedding, by the hash of its model and text."""
    return f"cache:emb:{digest}"


# The response cache (docs/cache.md): entries in one hash by request digest, their expiry times (the index that
# bounds and evicts them), the bytes they hold; a request in flight names its leader, and the jobs waiting on it.
CACHE_ENTRIES = "cache:responses"
CACHE_EXPIRY = "cache:responses:expiry"
CACHE_STATS = "cache:responses:stats"


def cache_inflight(digest: str) -> str:
    """The id of the job running a request now (its leader), while it runs."""
    return f"cache:inflight:{digest}"


def cache_followers(digest: str) -> str:
    """Set of the jobs waiting for the leader of a request in flight (they share its run)."""
    return f"cache:followers:{digest}"


# Semantic matching (events/semantic_cache.py): per partition (a request's digest without its query), the stored
# requests' word vectors, and a version that moves whenever they change, so each API process knows to rebuild its
# in-memory index of them. Both keys of a partition share its hash tag.
def cache_semantic(partition: str) -> str:
    """Hash of a partition's stored requests: cache digest -> word vector (JSON)."""
    return f"cache:semantic:{{{partition}}}"


def cache_semantic_version(partition: str) -> str:
    """A token that changes with every change to a partition's stored requests."""
    return f"cache:semantic:{{{partition}}}:version"


def attachment(user_id: str, attachment_id: str) -> str:
    """Hash of one uploaded image (media type, bytes, size); under its owner's name, so no one else can find it."""
    return f"att:{{{user_id}}}:{attachment_id}"


def rate_limit(key_id: str, window: int) -> str:
    """Requests made with one API key in one rate-limit window."""
    return f"ratelimit:{key_id}:{window}"


def idempotency(user_id: str, key: str) -> str:
    """What an Idempotency-Key of one user maps to."""
    return f"idem:{user_id}:{key}"


RUNNING_JOBS = "jobs:running"
# Queued jobs by when their current message was pushed (or last looked for without an answer): the sweeper's
# worklist for messages lost on the way to a worker. Written by submit and requeue, left by start and cancel.
QUEUED_JOBS = "jobs:queued"
# Documents whose ingest message is on its way to a worker, by when it was pushed (or last looked for without an
# answer): the same worklist for lost ingest messages. Written by DocumentStore.create and the sweeper, left when an
# ingest starts and on delete. One key for every user, as QUEUED_JOBS is; members are `queued_doc(user, doc)`.
QUEUED_DOCS = "docs:queued"


def queued_doc(user_id: str, doc_id: str) -> str:
    """A document's member of QUEUED_DOCS: owner and id, tab-separated (ids never hold a tab)."""
    return f"{user_id}\t{doc_id}"


# kombu's Redis transport keeps each message a worker took and has not acknowledged here, by delivery tag.
KOMBU_UNACKED = "unacked"
WORKERS_SEEN = "workers:seen"  # zset: Celery worker hostname -> last heartbeat (epoch seconds)
WORKER_BEAT_S = 5  # how often a worker marks itself seen
WORKER_GONE_S = 15  # a worker not seen for this long counts as gone
ACTIVE_USERS = "metrics:active_users"  # zset: user id -> last authenticated request (epoch seconds)
CUSTOM_METRICS = "metrics:custom"  # hash: custom metric family -> JSON {kind, labels}


def custom_metric_series(family: str) -> str:
    """Set of the label sets recorded for a custom metric family (bounds them across instances)."""
    return f"metrics:custom:series:{family}"


def dead_letters(group: str) -> str:
    """Entries a consumer group gave up on."""
    return f"stream:dead:{group}"


def dedupe(group: str, entry_id: str) -> str:
    """Marks an entry as applied by a group, so a redelivery changes nothing."""
    return f"seen:{group}:{entry_id}"


# Budgets: every key of one user shares the hash tag {user}, so the budget scripts stay in one slot.
HOLDS_INDEX = "budget:holds"
ALERTS_STREAM = "stream:alerts"


def budget_config(user_id: str) -> str:
    """Hash of a user's budgets: scope ('user', 'session:…', 'agent:…') → JSON limit, period, alert_pct."""
    return f"budget:{{{user_id}}}:cfg"


def budget_period(user_id: str, period_id: str) -> str:
    """Hash of spent:/held:/alerted: counters per scope for one period (d20261126, w2026-48, m202611, total)."""
    return f"budget:{{{user_id}}}:p:{period_id}"


def budget_hold(user_id: str, job_id: str) -> str:
    """Hash of one job's hold: amount, spent so far, the scopes and periods it counts against."""
    return f"budget:{{{user_id}}}:hold:{job_id}"


def ledger_hour(owner: str, bucket: str) -> str:
    """Hash of one hour's spend and tokens, for a user or for 'all' users."""
    return f"ledger:{owner}:h:{bucket}"


def ledger_total(owner: str) -> str:
    """Hash of all-time spend and tokens, for a user or for 'all' users."""
    return f"ledger:{owner}:total"


def ledger_queries(user_id: str) -> str:
    """Hash of a user's runs and cost per identical query (n:/c: + query hash)."""
    return f"ledger:{user_id}:queries"


def ledger_seen(hour: str) -> str:
    """Set of the usage entries the ledger applied, of those added to the stream in one UTC hour (YYYYMMDDHH)."""
    return f"seen:ledger:h:{hour}"


# Failed authentications per client address, counted per window (see api/lockout.py and the sweeper).
AUTH_FAILURE_WINDOWS = "authfail:windows"  # sorted set of the windows that have counts (window number as score)


def auth_failures(window: int) -> str:
    """Hash of one window's failed authentications: client address -> count."""
    return f"authfail:{window}"


# The audit chain (events/process/audit_chain.py): records chained by hash, the newest one's seq and hash,
# the stream:audit entries appended (dedupe), and the seq and hash of the last record trimmed.
AUDIT_LOG = "audit:log"
AUDIT_HEAD = "audit:head"
AUDIT_SEEN = "audit:seen"
AUDIT_CHECKPOINT = "audit:checkpoint"
