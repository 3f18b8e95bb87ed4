"""Publishing events: one attempt's job stream, and the shared streams.

Token events are batched: they wait at most `flush_ms` (a background thread flushes stragglers),
so each token reaches the relay within that bound while bursts cost one pipelined XADD round trip.
Every other event flushes the tokens before it, so the stream stays in `seq` order. Each write to a job stream
ends with a notice on the channel named like the stream, which is how the SSE relays know to read it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

from events.envelope import Event, EventType

MAX_BATCH = 64


def publish(client: Any, stream: str, event: Event, *, maxlen: int | None = None) -> Any:
    """XADD one event to a shared stream (`client` may be a pipeline)."""
    if maxlen:
        return client.xadd(stream, event.to_fields(), maxlen=maxlen, approximate=True)
    return client.xadd(stream, event.to_fields())


class JobPublisher:
    """Writes the events of one job attempt to its stream, numbering them from `seq`."""

    def __init__(
        self,
        client: Any,
        stream: str,
        job_id: str,
        attempt: int,
        seq: int,
        *,
        flush_ms: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._stream = stream
        self._job_id = job_id
        self._attempt = attempt
        self._seq = seq
        self._flush_s = flush_ms / 1000
        self._clock = clock
        self._buffer: list[Event] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._error: BaseException | None = None
        self._flusher: threading.Thread | None = None

    @property
    def next_seq(self) -> int:
        """The `seq` the next event will get."""
        return self._seq

    def _event(self, etype: str, data: Mapping[str, Any]) -> Event:
        event = Event(etype, self._job_id, self._seq, self._clock(), self._attempt, data)
        self._seq += 1
        return event

    def token(self, text: str, **data: Any) -> None:
        """Queue a token event; it is written within `flush_ms`."""
        with self._lock:
            self._raise_pending()
            self._buffer.append(self._event(EventType.TOKEN.value, {"text": text, **data}))
            if len(self._buffer) >= MAX_BATCH or self._flush_s == 0:
                self._write(self._take())
                return
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="token-flusher", daemon=True)
                self._flusher.start()
            if len(self._buffer) == 1:  # only the first token of a batch starts the clock
                self._wake.notify()

    def emit(self, etype: str, data: Mapping[str, Any]) -> int:
        """Write any event now (after the tokens before it); returns its seq."""
        with self._lock:
            self._raise_pending()
            event = self._event(etype, data)
            self._write([*self._take(), event])
            return event.seq

    def reserve_seq(self) -> int:
        """Flush the tokens, then hand out the next seq for an event written elsewhere (a Lua script)."""
        with self._lock:
            self._raise_pending()
            self._write(self._take())
            seq = self._seq
            self._seq += 1
            return seq

    def flush(self) -> None:
        """Write buffered tokens now."""
        with self._lock:
            self._raise_pending()
            self._write(self._take())

    def close(self) -> None:
        """Flush and stop the flusher thread."""
        with self._lock:
            self._closed = True
            self._wake.notify()
            pending = self._take()
            if pending and self._error is None:
                self._write(pending)
        if self._flusher is not None:
            self._flusher.join(timeout=1)

    def _take(self) -> list[Event]:
        batch, self._buffer = self._buffer, []
        return batch

    def _write(self, batch: list[Event]) -> None:
        if not batch:
            return
        pipe = self._client.pipeline(transaction=False)
        for event in batch:
            pipe.xadd(self._stream, event.to_fields())
        pipe.publish(self._stream, "")  # the relays watching this stream read it now (api/relay_notices.py)
        pipe.execute()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _flush_loop(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._buffer:
                    self._wake.wait()
                    continue
                self._wake.wait(self._flush_s)
                try:
                    self._write(self._take())
                except Exception as ex:  # surfaced to the task on its next call
                    self._error = ex
