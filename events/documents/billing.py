"""What embedding a document costs, held and charged against its owner's budgets like a job's model calls.

Ingestion runs outside any job, so it takes a hold of its own, keyed by the document id, for the worst case of the
texts it is about to embed (every UTF-8 byte a full-price input token), against the owner's `user` and `agent:rag`
budgets, all or nothing (the same script as a job's hold). Each provider call is charged to that hold once, with a
usage event (agent `rag`), so the ledger, `GET /costs/*` and the budgets count it like any model call; the hold is
settled as the batch ends. A worker that dies in between leaves its hold to the sweeper, which settles it (spend
counted, the rest returned) once `HOLD_TTL_S` has passed: a hold not owned by a job is settled when it expires.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any, Callable, Sequence

from events.documents.dense import Embedder, pack, token_bound
from events.money.amounts import ceil_micros, micros_to_usd
from events.money.budgets import job_scopes
from events.money.prices import PriceBook
from events.money.usage import usage_data
from events.store import budget_scripts, keyspace
from events.store.budget_scripts import Held, settle_hold
from events.store.scripts import Scripts

AGENT = "rag"  # the agent whose budget (scope `agent:rag`) documents' embeddings count against


class EmbeddingRefused(Exception):
    """Raised when the owner's budgets cannot hold the worst case of an embedding call."""


class DocumentBill:
    """Pays for a document's embeddings; `client` is a sync redis client."""

    def __init__(
        self,
        client: Any,
        prices: PriceBook,
        *,
        provider: str,
        hold_ttl_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.scripts = Scripts(client)
        self.prices = prices
        self.provider = provider
        self.hold_ttl_s = hold_ttl_s
        self.clock = clock

    def embed(self, user: str, doc_id: str, embedder: Embedder, texts: Sequence[str]) -> list[str]:
        """Embed `texts` (one provider call) under a hold; returns the packed vectors. Raises EmbeddingRefused
        when a budget has no room for the call's worst case, UnknownModelError when the model has no price."""
        price = self.prices.price(embedder.model)
        bound = ceil_micros(Decimal(token_bound(texts)) * price.input_per_mtok / 1_000_000)
        self._hold(user, doc_id, bound)
        try:
            made = embedder.embed(texts)
            cost = self.prices.cost_micros(embedder.model, made.input_tokens, 0)
            usage = usage_data(
                model=embedder.model,
                input_tokens=made.input_tokens,
                output_tokens=0,
                cached_input_tokens=0,
                cost_micros=cost,
                price_source=price.source,
                user_id=user,
                agent=AGENT,
                provider=self.provider,
            )
            self.client.hset(keyspace.doc_charges(user, doc_id), "document", doc_id)
            self.client.expire(keyspace.doc_charges(user, doc_id), self.hold_ttl_s * 2)
            self.scripts.run(
                budget_scripts.charge_document(
                    user_id=user,
                    doc_id=doc_id,
                    charge_id=uuid.uuid4().hex,
                    cost_micros=cost,
                    now=self.clock(),
                    usage=usage,
                )
            )
        finally:
            settle_hold(self.scripts, user_id=user, job_id=doc_id, now=self.clock())
        return [pack(v) for v in made.vectors]

    def _hold(self, user: str, doc_id: str, amount: int) -> None:
        for _ in range(2):
            now = self.clock()
            reply = self.scripts.run(
                budget_scripts.hold(
                    user_id=user,
                    job_id=doc_id,
                    amount_micros=amount,
                    scopes=job_scopes("", AGENT),
                    now=now,
                    expires_at=now + self.hold_ttl_s,
                )
            )
            if reply.outcome is Held.EXISTS:  # left by a worker that died: count its spend, then hold anew
                settle_hold(self.scripts, user_id=user, job_id=doc_id, now=now)
                continue
            if reply.rejection is not None:
                no = reply.rejection
                raise EmbeddingRefused(
                    f"embedding it could cost up to ${micros_to_usd(amount)}, but the {no.period} budget for scope "
                    f"'{no.scope}' has ${micros_to_usd(max(no.remaining_micros, 0))} left of "
                    f"${micros_to_usd(no.limit_micros)}"
                )
            return
        raise EmbeddingRefused("another worker holds this document's embedding budget")

    def spent_micros(self, user: str, doc_id: str) -> int:
        """What embedding the document has cost so far."""
        return int(self.client.hget(keyspace.doc_charges(user, doc_id), "cost_micros") or 0)
