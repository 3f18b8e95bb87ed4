"""An OpenAI-compatible chat completions simulator, the stand-in for the LLM service in tests and benchmarks.

Run it with `python -m tests.llmsim --host 127.0.0.1 --port PORT`. `POST /v1/chat/completions` answers like
OpenAI (SSE chunks, usage chunk, error JSON); `POST /v1/embeddings` answers with small vectors that put texts
with the same words, or synonyms from `SYNONYMS`, close together (so a test can tell a dense search from a
sparse one); the `/_sim/*` control API queues scripted behaviours, sets the token rate and shows the requests it
received. `SimControl` and `run_simulator()` drive it from tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import re
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import falcon
import falcon.asgi
import httpx
from falcon.asgi import SSEvent

_TOKEN = re.compile(r"\s*\S+|\s+")
_STEP_KINDS = {"text", "tool_call", "error", "stall", "drop"}
DEFAULT_RATE = 1000.0
EMBEDDING_DIMS = 64
# Words the simulated embedding model treats as one meaning (the first of each group).
SYNONYMS = {
    word: group[0]
    for group in (("car", "automobile", "vehicle"), ("repair", "maintenance", "service", "fix"), ("cat", "kitten"))
    for word in group
}


def sim_embedding(text: str) -> list[float]:
    """A unit vector of `text`'s words (synonyms merged), each word hashed to a dimension and a sign."""
    vector = [0.0] * EMBEDDING_DIMS
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.blake2b(SYNONYMS.get(word, word).encode(), digest_size=4).digest()
        index = int.from_bytes(digest, "big")
        vector[index % EMBEDDING_DIMS] += 1.0 if index & 1 << 31 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def split_tokens(text: str) -> list[str]:
    """Split text into the simulator's tokens: words with their leading whitespace; they join back to `text`."""
    return _TOKEN.findall(text)


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens as the simulator counts them: the words of every message, plus 3 per message."""
    return sum(len(_content_text(m.get("content")).split()) + 3 for m in messages)


def default_reply(messages: list[dict[str, Any]]) -> str:
    """The answer when no script is queued: it echoes the tool result, or else the last user message."""
    if messages and messages[-1].get("role") == "tool":
        return f"Simulated answer using tool result: {_content_text(messages[-1].get('content'))}"
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    return f"Simulated answer to: {_content_text(last_user.get('content'))}"


def cut_tokens(tokens: list[str], limit: int | None) -> tuple[list[str], str]:
    """Keep at most `limit` tokens; the finish reason is "length" when some were cut, else "stop"."""
    if limit is not None and len(tokens) > limit:
        return tokens[:limit], "length"
    return tokens, "stop"


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = {429: "rate_limit_exceeded"}.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class _Dropped(Exception):
    """Raised inside a response to make uvicorn close the connection mid-body, like a dropped link."""


def _not_a_drop(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], _Dropped))


class _Call:
    """One chat request being answered: its body, its record in the log and how it is streamed."""

    def __init__(self, body: dict[str, Any], record: dict[str, Any], seq: int, rate: float) -> None:
        self.body, self.record, self.rate = body, record, rate
        self.id, self.created, self.model = f"chatcmpl-sim-{seq}", int(time.time()), str(body.get("model", "sim"))
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        self.limit = int(limit) if limit else None
        self.prompt_tokens = count_prompt_tokens(body.get("messages") or [])

    def usage(self, completion_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None, usage: dict | None = None) -> SSEvent:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        data: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_sim",
            "choices": choices,
        }
        if self.include_usage:
            data["usage"] = usage
        return SSEvent(text=json.dumps(data))

    def completion(self, message: dict[str, Any], finish: str, completion_tokens: int) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "refusal": None, **message},
            "logprobs": None,
            "finish_reason": finish,
        }
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_sim",
            "choices": [choice],
            "usage": self.usage(completion_tokens),
        }

    async def stream(
        self,
        first: dict[str, Any],
        deltas: list[dict[str, Any]],
        finish: str,
        stall: tuple[int, float] | None,
        drop_after: int | None,
    ) -> AsyncIterator[SSEvent]:
        """Stream `deltas` at the call's rate, pausing once at `stall` or breaking the connection at `drop_after`."""
        self.record["outcome"] = "streaming"
        try:
            yield self.chunk(first)
            loop = asyncio.get_running_loop()
            start, base = loop.time(), 0
            for i in range(len(deltas) + 1):
                if stall and i == min(stall[0], len(deltas)):
                    await asyncio.sleep(stall[1])
                    start, base = loop.time(), i  # pace the rest from here: no burst to catch up
                if drop_after is not None and i == min(drop_after, len(deltas)):
                    self.record["outcome"] = "dropped"
                    raise _Dropped()
                if i < len(deltas):
                    await self._pace(loop, start, i - base)
                    yield self.chunk(deltas[i])
            yield self.chunk({}, finish)
            if self.include_usage:
                yield self.chunk(None, usage=self.usage(len(deltas)))
            yield SSEvent(text="[DONE]")
            self.record["outcome"] = "completed"
        finally:
            if self.record["outcome"] == "streaming":  # Falcon stopped iterating: the client went away
                self.record["outcome"] = "disconnected"

    async def _pace(self, loop: asyncio.AbstractEventLoop, start: float, index: int) -> None:
        if self.rate <= 0:
            if index % 64 == 63:
                await asyncio.sleep(0)  # let other streams run even at full speed
            return
        delay = start + index / self.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


class _State:
    """What the control API sets and the chat endpoint reads: the rate, the script, the request log."""

    def __init__(self) -> None:
        self.seq = 0
        self.reset()

    def reset(self) -> None:
        """Forget the script, the rate setting and the request log; ids keep counting up."""
        self.rate = DEFAULT_RATE
        self.script: deque[dict[str, Any]] = deque()
        self.records: list[dict[str, Any]] = []
        self.embedding_script: deque[dict[str, Any]] = deque()  # error steps only
        self.embedding_records: list[dict[str, Any]] = []


def _validate_step(step: Any) -> str | None:
    if not isinstance(step, dict) or step.get("kind") not in _STEP_KINDS:
        return f"Each step needs a 'kind' among {sorted(_STEP_KINDS)}; got {step!r}."
    if step["kind"] == "error" and not 400 <= int(step.get("status", 0)) <= 599:
        return "An error step needs a 'status' between 400 and 599."
    if step["kind"] == "tool_call" and not step.get("name"):
        return "A tool_call step needs a 'name'."
    if not isinstance(step.get("repeat", 1), int) or not 1 <= step.get("repeat", 1) <= 10:
        return "A step's 'repeat' is a whole number from 1 to 10."
    return None


class ChatCompletions:
    """`POST /v1/chat/completions`: the next scripted step, or the default reply."""

    def __init__(self, state: _State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        auth = req.get_header("Authorization") or ""
        body = await _read_json(req)
        record: dict[str, Any] = {
            "body": body,
            "has_authorization": bool(auth),
            "step": None,
            "outcome": "pending",
            "traceparent": req.get_header("traceparent"),
        }
        self.state.records.append(record)
        if not (auth.startswith("Bearer ") and auth[7:].strip()):
            record["outcome"] = "rejected"
            return _fail(resp, 401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            record["outcome"] = "rejected"
            return _fail(resp, 400, "The request body must be JSON with a 'messages' list.")
        step = self.state.script.popleft() if self.state.script else {"kind": "default"}
        record["step"], kind = step["kind"], step["kind"]
        self.state.seq += 1
        call = _Call(body, record, self.state.seq, float(step.get("tokens_per_s", self.state.rate)))
        if kind == "error":
            record["outcome"] = "error"
            if step.get("retry_after") is not None:
                resp.set_header("Retry-After", str(step["retry_after"]))
            status = int(step["status"])
            return _fail(resp, status, step.get("message") or f"Simulated error with status {status}.")
        if kind == "tool_call":  # `repeat`: that many calls of the tool in one reply
            arguments = json.dumps(step.get("arguments") or {})
            count = int(step.get("repeat", 1))
            first_id = step.get("id") or f"call_sim_{self.state.seq}"
            tools = [
                {
                    "id": first_id if n == 0 else f"{first_id}_{n}",
                    "type": "function",
                    "function": {"name": step["name"], "arguments": arguments},
                }
                for n in range(count)
            ]
            first = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {**tool, "index": n, "function": {"name": step["name"], "arguments": ""}}
                    for n, tool in enumerate(tools)
                ],
            }
            deltas = [
                {"tool_calls": [{"index": n, "function": {"arguments": arguments[i : i + 8]}}]}
                for n in range(count)
                for i in range(0, len(arguments), 8)
            ]
            message: dict[str, Any] = {"content": None, "tool_calls": tools}
            finish = "tool_calls"
        else:
            text = step["text"] if kind == "text" else step.get("text") or default_reply(body["messages"])
            tokens, finish = cut_tokens(split_tokens(text), call.limit)
            first, deltas = {"role": "assistant", "content": "", "refusal": None}, [{"content": t} for t in tokens]
            message = {"content": "".join(tokens)}
        stall = (int(step.get("after_tokens", 0)), float(step.get("seconds", 1.0))) if kind == "stall" else None
        drop_after = int(step.get("after_tokens", 0)) if kind == "drop" else None
        if body.get("stream"):
            resp.sse = call.stream(first, deltas, finish, stall, drop_after)
            return None
        if stall:
            await asyncio.sleep(stall[1])
        resp.content_type = falcon.MEDIA_JSON
        payload = json.dumps(call.completion(message, finish, len(deltas))).encode()
        if drop_after is not None:
            resp.content_length = len(payload)
            resp.stream = _truncated(payload, record)
        else:
            record["outcome"] = "completed"
            resp.data = payload
        return None


class Embeddings:
    """`POST /v1/embeddings`: an error step from the embeddings script, or one vector per input."""

    def __init__(self, state: _State) -> None:
        self.state = state

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        auth = req.get_header("Authorization") or ""
        body = await _read_json(req)
        record: dict[str, Any] = {"body": body, "outcome": "pending"}
        self.state.embedding_records.append(record)
        if not (auth.startswith("Bearer ") and auth[7:].strip()):
            record["outcome"] = "rejected"
            return _fail(resp, 401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.")
        texts = body.get("input") if isinstance(body, dict) else None
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            record["outcome"] = "rejected"
            return _fail(resp, 400, "'input' must be a non-empty string or a list of non-empty strings.")
        if self.state.embedding_script:
            step = self.state.embedding_script.popleft()
            record["outcome"] = "error"
            if step.get("retry_after") is not None:
                resp.set_header("Retry-After", str(step["retry_after"]))
            return _fail(resp, int(step["status"]), step.get("message") or f"Simulated error {step['status']}.")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for n, text in enumerate(texts):
            vector: Any = sim_embedding(text)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": n, "embedding": vector})
        tokens = sum(len(split_tokens(t)) for t in texts)
        record["outcome"] = "completed"
        resp.media = {
            "object": "list",
            "data": data,
            "model": body.get("model", ""),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return None


async def _read_json(req: falcon.asgi.Request) -> Any:
    """The body as JSON whatever the Content-Type says (curl -d sends a form type); None when it is not JSON."""
    raw = await req.stream.read()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


async def _truncated(payload: bytes, record: dict[str, Any]) -> AsyncIterator[bytes]:
    yield payload[: len(payload) // 2]
    record["outcome"] = "dropped"
    raise _Dropped()


def _fail(resp: falcon.asgi.Response, status: int, message: str) -> None:
    resp.status = status
    resp.media = _error_body(status, message)


class SimControlResource:
    """`/_sim/{action}`: config, script, reset, requests and health."""

    def __init__(self, state: _State) -> None:
        self.state = state

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, action: str) -> None:
        if action == "requests":
            resp.media = self.state.records
        elif action == "embeddings":
            resp.media = self.state.embedding_records
        elif action == "health":
            resp.media = {"ok": True}
        else:
            raise falcon.HTTPNotFound(description=f"Unknown simulator action '{action}'.")

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, action: str) -> None:
        data = await _read_json(req) or {}
        if not isinstance(data, dict):
            raise falcon.HTTPBadRequest(description="Send a JSON object.")
        if action == "reset":
            self.state.reset()
        elif action == "config":
            rate = data.get("tokens_per_s", self.state.rate)
            if not isinstance(rate, (int, float)) or rate < 0:
                raise falcon.HTTPBadRequest(description="tokens_per_s must be a number >= 0 (0 = no pacing).")
            self.state.rate = float(rate)
        elif action == "script":
            steps = data.get("steps")
            problems = [p for p in map(_validate_step, steps if isinstance(steps, list) else [None]) if p]
            if problems:
                raise falcon.HTTPBadRequest(description=problems[0])
            self.state.script.extend(steps)
        elif action == "embeddings_script":  # error steps for /v1/embeddings
            steps = data.get("steps")
            if not isinstance(steps, list) or not all(
                isinstance(x, dict) and x.get("kind") == "error" and 400 <= int(x.get("status", 0)) <= 599
                for x in steps
            ):
                raise falcon.HTTPBadRequest(description="Embedding steps are {'kind': 'error', 'status': 400-599}.")
            self.state.embedding_script.extend(steps)
        else:
            raise falcon.HTTPNotFound(description=f"Unknown simulator action '{action}'.")
        resp.media = {"ok": True, "queued": len(self.state.script), "tokens_per_s": self.state.rate}


def create_app() -> falcon.asgi.App:
    """Build the simulator's ASGI app with fresh state."""
    state = _State()
    app = falcon.asgi.App()
    app.add_route("/v1/chat/completions", ChatCompletions(state))
    app.add_route("/v1/embeddings", Embeddings(state))
    app.add_route("/_sim/{action}", SimControlResource(state))
    return app


class SimControl:
    """Drives a running simulator's control API; `base_url` may be the root or end in `/v1`."""

    def __init__(self, base_url: str) -> None:
        root = base_url.rstrip("/")
        self.root = root[: -len("/v1")] if root.endswith("/v1") else root
        self._http = httpx.Client(base_url=self.root, timeout=5.0)

    def config(self, **settings: Any) -> None:
        """Change settings, e.g. `config(tokens_per_s=0)`."""
        self._http.post("/_sim/config", json=settings).raise_for_status()

    def script(self, *steps: dict[str, Any]) -> None:
        """Queue behaviours, consumed one per chat request in order."""
        self._http.post("/_sim/script", json={"steps": list(steps)}).raise_for_status()

    def script_embeddings(self, *steps: dict[str, Any]) -> None:
        """Queue error steps (`{"kind": "error", "status": 503}`), consumed one per embeddings request."""
        self._http.post("/_sim/embeddings_script", json={"steps": list(steps)}).raise_for_status()

    def embedding_requests(self) -> list[dict[str, Any]]:
        """The embeddings requests received so far: body and outcome of each."""
        return list(self._http.get("/_sim/embeddings").raise_for_status().json())

    def reset(self) -> None:
        """Clear the script, the config and the recorded requests."""
        self._http.post("/_sim/reset").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        """The chat requests received so far: body, has_authorization, traceparent, step and outcome of each."""
        return list(self._http.get("/_sim/requests").raise_for_status().json())

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def run_simulator(port: int | None = None, *, startup_s: float = 15.0) -> Iterator[str]:
    """Run the simulator in a subprocess on `port` (a free one by default) and yield its base URL, ending in /v1."""
    port = port or free_port()
    root = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "tests.llmsim", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{root}/_sim/health", timeout=0.5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"The LLM simulator did not answer on port {port} within {startup_s} s.")
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(timeout=0.05)  # doubles as the pause between polls
                raise RuntimeError(f"The LLM simulator exited with code {code} before answering; see its stderr.")
        yield f"{root}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def main(argv: list[str] | None = None) -> None:
    """Serve the simulator until interrupted."""
    import uvicorn

    parser = argparse.ArgumentParser(description="OpenAI-compatible LLM simulator for tests and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.getLogger("uvicorn.error").addFilter(_not_a_drop)  # drops are on purpose, not server errors
    # A short graceful shutdown: streams still stalling at exit are of no interest to anyone.
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
