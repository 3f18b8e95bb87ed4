"""Dense embeddings through the provider's `/embeddings` (the LLM simulator speaks it), paid under budget holds,
cached, and fused with the sparse search: the library on a real Redis, then a whole stack with a model.

The simulator's embedding model treats `car`/`automobile` and `repair`/`maintenance` as synonyms, so "car repair"
finds a document about automobile maintenance only through the dense search: the words share nothing."""

from __future__ import annotations

import itertools
import json
from typing import Any, Iterator

import httpx
import pytest
import redis

from events.documents import sparse
from events.documents.billing import DocumentBill
from events.documents.cache import EmbeddingCache
from events.documents.dense import fuse, pack, unpack
from events.documents.index import Chunk, DenseQuery, LocalIndex, ServerIndex
from events.documents.library import DocumentLibrary
from events.documents.records import new_doc_id
from events.money.prices import PriceBook
from events.store import keyspace
from settings import ROOT
from tests.conftest import EMBEDDING_MODEL, create_user
from tests.llmsim import SimControl, run_simulator, sim_embedding
from tests.sse import read_events
from tests.stack import wait_for
from workers.llm.embeddings import ProviderEmbedder
from workers.llm.openai_provider import OpenAIProvider
from workers.llm.provider import LLMRequestError

MODEL = EMBEDDING_MODEL  # the embedding model of the whole stack below
CARS = "Automobile maintenance schedule: change the oil every 10,000 kilometres and rotate the tyres."
TEA = "Green tea is brewed with water at about 80 degrees Celsius for two minutes."
_users = itertools.count()


# ---- pure ---------------------------------------------------------------------------------------------------------


def test_fusion_ranks_what_both_searches_found_above_what_one_found() -> None:
    fused = fuse([["a", "b", "c"], ["c", "d"]], key=lambda x: x, limit=3)
    # c: 1/63 + 1/61; a: 1/61; b and d tie at 1/62, and a tie keeps the first ranking's order
    assert [item for item, _ in fused] == ["c", "a", "b"]
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)
    assert fuse([[], []], key=lambda x: x, limit=3) == []


def test_a_packed_vector_comes_back_at_unit_length() -> None:
    back = unpack(pack([3.0, 4.0]))
    assert back == pytest.approx([0.6, 0.8], abs=1e-6)
    assert len(pack([0.1] * 1536)) < 8_200  # base64 of float32: about a quarter of JSON's size


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_local_and_server_indexes_fuse_dense_and_sparse_hits() -> None:
    from qdrant_client import QdrantClient

    chunks = [
        Chunk("doc_c", "cars", 0, CARS, sparse.document_vector(CARS), unpack(pack(sim_embedding(CARS)))),
        Chunk("doc_t", "tea", 0, TEA, sparse.document_vector(TEA), unpack(pack(sim_embedding(TEA)))),
    ]
    query = sparse.query_vector("car repair")
    dense = DenseQuery(MODEL, unpack(pack(sim_embedding("car repair"))))
    local = LocalIndex()
    assert local.search("u", "1", lambda: chunks, query, 1) == []  # no shared word: sparse finds nothing
    assert local.search("u", "1", lambda: chunks, query, 1, dense)[0].doc_id == "doc_c"

    server = ServerIndex(QdrantClient(location=":memory:"))  # the same API as a server, in this process
    server.write("u", chunks, MODEL)
    assert server.search("u", ["doc_c", "doc_t"], query, 1) == []
    [hit] = server.search("u", ["doc_c", "doc_t"], query, 1, dense)
    assert hit.doc_id == "doc_c" and hit.score == pytest.approx(1 / 61)
    assert server.search("u", ["doc_t"], query, 2, dense)[0].doc_id == "doc_t"  # only ready documents
    assert server.search("u", ["doc_c"], query, 2, DenseQuery("another-model", dense.vector)) == []
    server.drop("u", "doc_c")
    assert server.search("u", ["doc_c"], query, 2, dense) == []


# ---- the provider and the library, on a real Redis -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[str, SimControl]]:
    with run_simulator() as base_url:
        control = SimControl(base_url)
        yield base_url, control
        control.close()


@pytest.fixture
def provider(sim: tuple[str, SimControl]) -> Iterator[OpenAIProvider]:
    base_url, control = sim
    control.reset()
    made = OpenAIProvider(api_key="sk-test-0123456789", base_url=base_url, max_retries=2, sleep=lambda _: None)
    yield made
    made.close()


def test_the_provider_embeds_in_order_retries_a_503_and_reports_tokens(
    provider: OpenAIProvider, sim: tuple[str, SimControl]
) -> None:
    _, control = sim
    control.script_embeddings({"kind": "error", "status": 503})
    made = provider.embed(MODEL, ["car repair", "green tea"])
    assert [unpack(pack(v)) for v in made.vectors] == [
        pytest.approx(sim_embedding("car repair"), abs=1e-6),
        pytest.approx(sim_embedding("green tea"), abs=1e-6),
    ]
    assert made.input_tokens == 4
    assert [r["outcome"] for r in control.embedding_requests()] == ["error", "completed"]


def test_the_provider_gives_up_on_a_400_with_the_services_message(
    provider: OpenAIProvider, sim: tuple[str, SimControl]
) -> None:
    _, control = sim
    control.script_embeddings({"kind": "error", "status": 400, "message": "model sk-leaked-secret-123 not found"})
    with pytest.raises(LLMRequestError) as caught:
        provider.embed(MODEL, ["x"])
    assert "HTTP 400" in str(caught.value) and "sk-leaked" not in str(caught.value)
    assert len(control.embedding_requests()) == 1  # never retried


def _upload(raw: redis.Redis, user: str, name: str, text: str) -> str:
    doc_id = new_doc_id()
    record = {"id": doc_id, "owner": user, "name": name, "content_type": "text/plain", "bytes": str(len(text))}
    raw.hset(keyspace.doc(user, doc_id), mapping={**record, "status": "processing", "created_at": "1"})
    raw.zadd(keyspace.user_docs(user), {doc_id: 1})
    raw.set(keyspace.doc_upload(user, doc_id), text.encode())
    return doc_id


def _library(raw: redis.Redis, provider: OpenAIProvider) -> DocumentLibrary:
    bill = DocumentBill(raw, PriceBook(ROOT / "ops" / "prices.yaml"), provider="openai", hold_ttl_s=60)
    embedder = ProviderEmbedder(MODEL, provider)
    return DocumentLibrary(raw, LocalIndex(), EmbeddingCache(raw), embedder=embedder, bill=bill)


def _usage(raw: redis.Redis, user: str) -> list[dict[str, Any]]:
    found = []
    for _, fields in raw.xrange(keyspace.USAGE_STREAM):
        data = json.loads(fields[b"data"])
        if data.get("user_id") == user:
            found.append(data)
    return found


def test_ingestion_pays_for_dense_vectors_once_and_search_is_hybrid(
    raw: redis.Redis, provider: OpenAIProvider, sim: tuple[str, SimControl]
) -> None:
    _, control = sim
    user = f"hybrid{next(_users)}"
    library = _library(raw, provider)
    cars, tea = _upload(raw, user, "cars.txt", CARS), _upload(raw, user, "tea.txt", TEA)
    assert library.ingest(user, cars) == "ready" and library.ingest(user, tea) == "ready"

    record = {k.decode(): v.decode() for k, v in raw.hgetall(keyspace.doc(user, cars)).items()}
    [usage, _] = _usage(raw, user)
    assert record["embedding_model"] == MODEL and "embedding_error" not in record
    assert usage["model"] == MODEL and usage["agent"] == "rag" and usage["input_tokens"] > 0
    assert int(record["embedding_cost_micros"]) == usage["cost_micros"] > 0
    assert raw.keys(f"budget:{{{user}}}:hold:*") == [] and not raw.exists(keyspace.doc_charges(user, cars))

    def pay(texts: list[str]) -> list[str]:  # what a job's embed does, less the hold (workers/runner.py)
        return [pack(v) for v in provider.embed(MODEL, texts).vectors]

    assert library.search(user, "car repair") == []  # words alone: nothing in common
    hits = library.search(user, "car repair", 2, pay)
    assert hits[0].doc_id == cars and hits[0].name == "cars.txt"

    asked = len(control.embedding_requests())
    again = _upload(raw, user, "cars-again.txt", CARS)
    assert library.ingest(user, again) == "ready"
    library.search(user, "car repair", 2, pay)
    assert len(control.embedding_requests()) == asked  # the chunk and the query were embedded before
    assert raw.hget(keyspace.doc(user, again), "embedding_model") == MODEL.encode()


def test_a_provider_failure_leaves_the_document_searchable_by_its_words(
    raw: redis.Redis, provider: OpenAIProvider, sim: tuple[str, SimControl]
) -> None:
    _, control = sim
    user = f"hybrid{next(_users)}"
    control.script_embeddings({"kind": "error", "status": 404, "message": "The model does not exist"})
    doc = _upload(raw, user, "tea.txt", TEA + " Unique words zebrafish.")
    assert _library(raw, provider).ingest(user, doc) == "ready"
    record = {k.decode(): v.decode() for k, v in raw.hgetall(keyspace.doc(user, doc)).items()}
    assert record["embedding_model"] == "" and "HTTP 404" in record["embedding_error"]
    assert _usage(raw, user) == [] and raw.keys(f"budget:{{{user}}}:hold:*") == []
    assert _library(raw, provider).search(user, "zebrafish")[0].doc_id == doc


# ---- a whole stack with a model (`sim_semantic`, shared with the semantic cache tests) ------------------------------


def _client(stack: Any, role: str = "user") -> httpx.Client:
    user_id, key = create_user(stack.env["REDIS_URL"], role)
    client = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    client.user_id = user_id  # type: ignore[attr-defined]
    return client


def _ready(client: httpx.Client, name: str, text: str) -> dict[str, Any]:
    resp = client.post("/api/v1/documents", files={"file": (name, text.encode(), "text/plain")})
    assert resp.status_code == 202, resp.text
    doc_id = resp.json()["id"]
    return wait_for(
        lambda: (d := client.get(f"/api/v1/documents/{doc_id}").json())["status"] == "ready" and d,
        timeout=30,
        what=f"{name} to be ready",
    )


def test_a_rag_job_with_a_model_finds_by_meaning_and_pays_for_its_query_embedding(
    sim_semantic: tuple[Any, SimControl],
) -> None:
    stack, control = sim_semantic
    control.reset()
    control.config(tokens_per_s=0)
    with _client(stack) as alice:
        doc = _ready(alice, "cars.txt", CARS)
        assert doc["embedding_model"] == MODEL and float(doc["embedding_cost_usd"]) > 0 and "warning" not in doc
        control.script(
            {"kind": "tool_call", "name": "search_documents", "arguments": {"query": "car repair"}},
            {"kind": "text", "text": "Change the oil every 10,000 km [cars.txt, chunk 0]."},
        )
        job = alice.post("/api/v1/jobs", json={"agent_type": "rag", "query": "How do I look after my car?"}).json()
        status, events = read_events(alice, f"/api/v1/jobs/{job['id']}/events")
        assert status == 200 and events[-1].event == "done", events[-1]
        [citations] = [e.data["data"]["citations"] for e in events if e.data["data"].get("event") == "citations"]
        assert citations[0]["document_id"] == doc["id"]
        usages = [e.data["data"] for e in events if e.event == "usage"]
        assert [u["model"] for u in usages].count(MODEL) == 1 and usages[0]["cost_micros"] >= 0
        done = alice.get(f"/api/v1/jobs/{job['id']}").json()
        assert done["status"] == "succeeded"
        assert done["usage"]["llm_calls"] == 3  # two chat calls and the query's embedding


def test_a_budget_without_room_for_embeddings_still_indexes_by_words(sim_semantic: tuple[Any, SimControl]) -> None:
    stack, control = sim_semantic
    control.reset()
    with _client(stack) as carol, _client(stack, "admin") as admin:
        user_id = carol.user_id  # type: ignore[attr-defined]
        budget = {"user_id": user_id, "limit_usd": "0.000001", "period": "monthly"}
        assert admin.post("/api/v1/costs/budget", json=budget).status_code == 200
        doc = _ready(carol, "tea.txt", TEA * 3)
        assert doc["embedding_model"] == "" and "budget for scope 'user'" in doc["warning"]
        assert doc["embedding_cost_usd"] == "0.000000" and control.embedding_requests() == []
