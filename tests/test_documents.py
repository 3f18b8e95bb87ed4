"""Documents: extraction (PDF by hand), chunking, sparse vectors, the embedding cache, both Qdrant index modes and
the library, on a real Redis; no stack needed (tests/test_documents_api.py drives the HTTP side)."""

from __future__ import annotations

import itertools
import json

import pytest
import redis

from events.documents import sparse
from events.documents.cache import EmbeddingCache
from events.documents.chunking import chunk_text, normalise
from events.documents.extract import MARKDOWN, PDF, PLAIN, ExtractError, extract_text, media_type
from events.documents.index import Chunk, LocalIndex, ServerIndex
from events.documents.library import DocumentLibrary
from events.documents.records import clean_name, new_doc_id
from events.store import keyspace
from events.telemetry.metrics import CACHE_OPS
from tests.pdfs import make_pdf

_users = itertools.count()

TEA = (
    "Green tea is brewed with water at about 80 degrees Celsius for two minutes. "
    "Black tea wants boiling water and four minutes of steeping."
)
COFFEE = "Espresso is brewed by forcing water at 93 degrees Celsius through finely ground coffee for 25 seconds."


@pytest.mark.parametrize(
    ("content_type", "filename", "expected"),
    [
        ("text/plain", "a.bin", PLAIN),
        ("text/plain; charset=utf-8", None, PLAIN),
        ("text/markdown", "notes", MARKDOWN),
        ("text/x-markdown", "notes", MARKDOWN),
        ("application/pdf", "scan.txt", PDF),
        ("application/octet-stream", "Report.PDF", PDF),
        ("application/octet-stream", "notes.md", MARKDOWN),
        ("", "notes.txt", PLAIN),
        ("application/octet-stream", "photo.png", None),
        ("image/png", "photo.txt", None),
        ("application/msword", "cv.doc", None),
    ],
)
def test_media_type_follows_the_part_type_and_the_extension_only_for_generic_types(
    content_type: str, filename: str | None, expected: str | None
) -> None:
    assert media_type(content_type, filename) == expected


def test_pdf_text_is_extracted_page_by_page() -> None:
    data = make_pdf([["The first page talks about (tea).", "Second line."], ["Page two: coffee."]])
    assert extract_text(data, PDF) == "The first page talks about (tea).\nSecond line.\n\nPage two: coffee."


@pytest.mark.parametrize(
    ("data", "kind", "message"),
    [
        (b"%PDF-1.4\nthis is not really a pdf", PDF, "cannot be read"),
        (b"\xff\xfe\x00broken", PLAIN, "not UTF-8"),
    ],
)
def test_unreadable_uploads_raise_a_clear_extract_error(data: bytes, kind: str, message: str) -> None:
    with pytest.raises(ExtractError, match=message):
        extract_text(data, kind)


def test_text_keeps_utf8_and_drops_a_byte_order_mark() -> None:
    assert extract_text("\ufeffCafé ☕".encode(), PLAIN) == "Café ☕"


def test_chunks_cover_the_text_overlap_and_stay_within_size() -> None:
    words = [f"word{i}" for i in range(600)]
    text = " ".join(words)
    chunks = chunk_text(text, size=200, overlap=50)
    assert all(len(c) <= 200 for c in chunks)
    assert chunks[0].startswith("word0 ") and chunks[-1].endswith("word599")
    seen = set(itertools.chain.from_iterable(c.split() for c in chunks))
    assert seen == set(words)  # no word lost, none cut in half
    for before, after in itertools.pairwise(chunks):
        assert after.split()[0] in before.split()  # each chunk starts inside the one before it


def test_chunks_prefer_sentence_ends_and_short_text_is_one_chunk() -> None:
    text = "First sentence here. " * 30
    chunks = chunk_text(text, size=100, overlap=20)
    assert all(c.endswith(".") for c in chunks)
    assert chunk_text("  short   text \n\n\n\n here ") == ["short text\n\nhere"]
    assert chunk_text("") == []
    assert normalise("a\t\tb\r\n\n\n\nc") == "a b\n\nc"


def test_sparse_vectors_hash_terms_stably_and_drop_stop_words() -> None:
    vector = sparse.document_vector("The teas and the tea, the TEA!")
    assert vector.indices == (sparse.term_index("tea"),)
    assert vector.values[0] == pytest.approx(3 * 2.2 / (3 + 1.2), abs=1e-3)
    assert sparse.term_index("tea") == 532194854  # the same in every process and on every machine
    query = sparse.query_vector("What is the tea tea temperature?")
    assert sorted(query.indices) == sorted({sparse.term_index("tea"), sparse.term_index("temperature")})
    assert set(query.values) == {1.0}
    assert sparse.SparseVector.from_json(json.loads(json.dumps(vector.to_json()))) == vector


def test_clean_name_keeps_the_last_path_part_and_printable_text() -> None:
    doc_id = new_doc_id()
    assert clean_name("C:\\Users\\me\\notes.md", doc_id) == "notes.md"
    assert clean_name("../../etc/passwd\x00", doc_id) == "passwd"
    assert clean_name("", doc_id) == doc_id


# ---- with Redis -------------------------------------------------------------------------------------------------


def _lookups(result: str) -> float:
    return CACHE_OPS.labels(operation="embedding_lookup", result=result)._value.get()


def test_embedding_cache_never_embeds_a_text_twice_even_across_instances(raw: redis.Redis) -> None:
    made: list[str] = []

    def compute(texts: list[str]) -> list[list[int]]:
        made.extend(texts)
        return [[len(t)] for t in texts]

    model = f"test-model-{next(_users)}"
    hits, misses = _lookups("hit"), _lookups("miss")
    first = EmbeddingCache(raw).embed(model, ["alpha", "beta", "alpha"], compute)
    second = EmbeddingCache(raw).embed(model, ["beta", "gamma", "alpha"], compute)
    assert first == [[5], [4], [5]] and second == [[4], [5], [5]]
    assert made == ["alpha", "beta", "gamma"]  # the repeated "alpha" of the first call was made once too
    assert _lookups("miss") - misses == 3 and _lookups("hit") - hits == 3  # a repeat counts as a hit
    assert EmbeddingCache(raw).embed("other-model", ["alpha"], compute) == [[5]] and made[-1] == "alpha"


def test_embedding_cache_evicts_the_oldest_beyond_its_bound(raw: redis.Redis) -> None:
    raw.delete(keyspace.EMBEDDING_INDEX)
    now = [1000.0]
    cache = EmbeddingCache(raw, max_entries=3, ttl_s=100, clock=lambda: now[0])
    model = f"bound-{next(_users)}"
    for i in range(5):
        now[0] += 1
        cache.embed(model, [f"t{i}"], lambda texts: [[1] for _ in texts])
    assert raw.zcard(keyspace.EMBEDDING_INDEX) == 3
    made: list[str] = []
    cache.embed(model, ["t0", "t4"], lambda texts: made.extend(texts) or [[1] for _ in texts])
    assert made == ["t0"]  # t0 was evicted, t4 was kept
    now[0] += 500  # everything is past its TTL now
    assert cache.trim() == 3 and raw.zcard(keyspace.EMBEDDING_INDEX) == 0


def _chunks(doc_id: str, name: str, texts: list[str]) -> list[Chunk]:
    return [Chunk(doc_id, name, i, t, sparse.document_vector(t)) for i, t in enumerate(texts)]


def test_local_index_rebuilds_on_a_new_version_and_evicts_the_least_recent_user() -> None:
    index = LocalIndex(max_users=2)
    loads: list[str] = []

    def load(user: str, texts: list[str]):  # type: ignore[no-untyped-def]
        return lambda: loads.append(user) or _chunks(f"doc_{user}", user, texts)

    query = sparse.query_vector("green tea water")
    assert index.search("a", "1", load("a", [TEA]), query, 3)[0].doc_id == "doc_a"
    assert index.search("a", "1", load("a", [TEA]), query, 3)[0].doc_id == "doc_a"
    assert loads == ["a"]  # same version: no reload
    assert index.search("a", "2", load("a", [COFFEE]), query, 3)[0].text == COFFEE
    index.search("b", "1", load("b", [TEA]), query, 3)
    index.search("c", "1", load("c", [TEA]), query, 3)
    assert index.cached_users() == ["b", "c"]
    assert loads == ["a", "a", "b", "c"]


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_server_index_filters_by_owner_and_ready_documents() -> None:
    from qdrant_client import QdrantClient

    index = ServerIndex(QdrantClient(location=":memory:"))  # the same API as a server, in this process
    index.write("alice", _chunks("doc_a", "alice tea", [TEA, COFFEE]))
    index.write("bob", _chunks("doc_b", "bob tea", [TEA]))
    query = sparse.query_vector("green tea brewed at 80 degrees")
    hits = index.search("alice", ["doc_a", "doc_b"], query, 5)
    assert {h.doc_id for h in hits} == {"doc_a"} and hits[0].chunk == 0
    assert [h.doc_id for h in index.search("bob", ["doc_b"], query, 5)] == ["doc_b"]
    assert index.search("alice", [], query, 5) == []  # no ready documents: nothing, whatever the points
    index.drop("alice", "doc_a")
    assert index.search("alice", ["doc_a"], query, 5) == []


def _upload(raw: redis.Redis, user: str, name: str, data: bytes, kind: str = PLAIN) -> str:
    doc_id = new_doc_id()
    record = {"id": doc_id, "owner": user, "name": name, "content_type": kind, "bytes": str(len(data))}
    raw.hset(keyspace.doc(user, doc_id), mapping={**record, "status": "processing", "created_at": "1"})
    raw.zadd(keyspace.user_docs(user), {doc_id: 1})
    raw.set(keyspace.doc_upload(user, doc_id), data)
    return doc_id


def test_two_processes_libraries_see_only_their_users_documents_and_deletes_at_once(raw: redis.Redis) -> None:
    alice, bob = f"alice{next(_users)}", f"bob{next(_users)}"
    # Each library has its own in-memory index, as two worker processes would.
    one, two = (DocumentLibrary(raw, LocalIndex(), EmbeddingCache(raw)) for _ in range(2))
    a_tea = _upload(raw, alice, "alice-tea.txt", TEA.encode())
    b_tea = _upload(raw, bob, "bob-tea.pdf", make_pdf([[TEA[:70], TEA[70:]]]), PDF)
    a_coffee = _upload(raw, alice, "coffee.md", COFFEE.encode(), MARKDOWN)
    assert [one.ingest(alice, a_tea), two.ingest(bob, b_tea), one.ingest(alice, a_coffee)] == ["ready"] * 3
    assert one.ingest(alice, a_tea) == "ready"  # a redelivered task changes nothing
    version = int(raw.get(keyspace.docs_version(alice)))

    question = "How hot should the water be for green tea?"
    for library in (one, two):
        hits = library.search(alice, question)
        assert hits[0].doc_id == a_tea and hits[0].name == "alice-tea.txt" and hits[0].chunk == 0
        assert {h.doc_id for h in hits} <= {a_tea, a_coffee}
        assert [h.doc_id for h in library.search(bob, question)] == [b_tea]

    raw.delete(keyspace.doc(alice, a_tea), keyspace.doc_chunks(alice, a_tea))  # what DELETE does, plus:
    raw.zrem(keyspace.user_docs(alice), a_tea)
    raw.incr(keyspace.docs_version(alice))
    assert int(raw.get(keyspace.docs_version(alice))) == version + 1
    for library in (one, two):
        assert a_tea not in {h.doc_id for h in library.search(alice, question)}


def test_ingest_marks_unreadable_and_empty_files_failed_with_a_reason(raw: redis.Redis) -> None:
    user = f"carol{next(_users)}"
    library = DocumentLibrary(raw, LocalIndex(), EmbeddingCache(raw))
    broken = _upload(raw, user, "broken.pdf", b"%PDF-1.4 nothing", PDF)
    empty = _upload(raw, user, "empty.txt", b"   \n ")
    assert library.ingest(user, broken) == "failed" and library.ingest(user, empty) == "failed"
    assert b"cannot be read" in raw.hget(keyspace.doc(user, broken), "error")
    assert b"no text" in raw.hget(keyspace.doc(user, empty), "error")
    assert not raw.exists(keyspace.doc_upload(user, broken))
    assert library.search(user, "anything at all") == []


def test_a_document_deleted_during_ingestion_stays_deleted(raw: redis.Redis) -> None:
    user = f"dave{next(_users)}"
    library = DocumentLibrary(raw, LocalIndex(), EmbeddingCache(raw))
    doc_id = _upload(raw, user, "tea.txt", TEA.encode())
    raw.delete(keyspace.doc(user, doc_id))
    assert library.ingest(user, doc_id) == "deleted"
    assert not raw.exists(keyspace.doc_chunks(user, doc_id), keyspace.doc_upload(user, doc_id))
