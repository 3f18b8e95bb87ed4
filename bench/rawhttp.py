"""A bare asyncio HTTP/1.1 client for load: keep-alive requests and SSE reads, no library overhead."""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from typing import Any, cast


class Connection:
    """One keep-alive connection to the API."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        """Connect."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request and read the whole response (Content-Length framed)."""
        assert self.reader is not None and self.writer is not None
        payload = json.dumps(body).encode() if body is not None else b""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(payload)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        status, head = await self._head()
        length = int(head.get("content-length", "0"))
        data = await self.reader.readexactly(length) if length else b""
        return status, head, data

    async def open_stream(self, path: str, headers: dict[str, str] | None = None) -> int:
        """Send a GET for an event stream and read its status line and headers."""
        assert self.writer is not None
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, _ = await self._head()
        return status

    async def next_event(self) -> tuple[str, dict[str, Any]]:
        """Read the stream up to the next event's `data:` line; returns its type and data."""
        assert self.reader is not None
        etype = "message"
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("stream closed")
            if line.startswith(b"event:"):
                etype = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                return etype, json.loads(line[5:])

    async def _head(self) -> tuple[int, dict[str, str]]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        first, *rest = raw.decode("latin-1").split("\r\n")
        head = {}
        for line in rest:
            if ":" in line:
                name, _, value = line.partition(":")
                head[name.strip().lower()] = value.strip()
        return int(first.split()[1]), head

    def close(self) -> None:
        """Close the socket."""
        if self.writer is not None:
            self.writer.close()


class SSECounter(asyncio.Protocol):
    """One event stream read as a bare protocol (no task, no StreamReader per event): sends its GET once connected,
    then keeps the `seq` of every `data:` line's JSON and its lag, receive time - its `ts` (numbers or strings)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.status = 0
        self.seqs = array("q")
        self.lags = array("d")
        self.lost = False  # the connection ended (by either side)
        self.head: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._rest = b""

    @staticmethod
    def get(host: str, port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
        """The request that opens an event stream."""
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the request."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """Read the status line, then count events. Each SSE block comes in one chunk of the chunked body, so the
        chunk-size lines sit between blocks, never inside a `data:` line."""
        now = time.time()
        buf = self._rest + data
        if not self.status:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._rest = buf
                return
            self.status = int(buf.split(None, 2)[1])
            self.head.set_result(self.status)
            buf = buf[end + 4 :]
        cut = buf.rfind(b"\n") + 1
        self._rest = buf[cut:]
        for row in buf[:cut].split(b"\n"):
            if row.startswith(b"data:"):
                event = json.loads(row[5:])
                self.seqs.append(int(event["seq"]))
                self.lags.append(now - float(event["ts"]))

    def connection_lost(self, exc: Exception | None) -> None:
        """Note the end; a stream that never answered fails its `head`."""
        self.lost = True
        if not self.head.done():
            self.head.set_exception(ConnectionError(f"the server closed the connection before answering: {exc!r}"))

    def close(self) -> None:
        """Close the socket."""
        if self.transport is not None:
            self.transport.close()
