"""The relay's reads of job streams: XREAD on one connection of its own, the command packed and the reply taken
apart here.

Through redis-py's `xread` a read cost more than everything else the relay does: the encoder's checks on each of
its arguments, then the reply turned into lists of dicts for the relay to take apart again (a third of the API
process at 5,000 events/s, py-spy: docs/BENCHMARKS.md). Here the command's bytes are joined in one pass, and the
reply is used as the parser returns it: a map (RESP3) or a list of pairs (RESP2) of stream key to entries, each
entry its id and a flat list of fields and values.

The connection is lent by the reader's pool (so it has the pool's TLS, password and timeouts) and held between
reads; any error returns it, disconnected, and the next read takes a new one.
"""

from __future__ import annotations

from typing import Any, Iterator

Entry = tuple[bytes, dict[bytes, bytes]]  # an entry's id and its fields


def bulk_strings(args: list[bytes]) -> bytes:
    """`args` as the arguments of a command in Redis's wire protocol (RESP), one after the other."""
    return b"".join([b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args])


def command(args: list[bytes]) -> bytes:
    """`args` as one command in Redis's wire protocol."""
    return b"*%d\r\n" % len(args) + bulk_strings(args)


def pack_xread(streams: dict[str, str], count: int) -> bytes:
    """XREAD COUNT `count` STREAMS for each stream key of `streams` after its id, as Redis's wire protocol."""
    args = [b"XREAD", b"COUNT", b"%d" % count, b"STREAMS"]
    args += [key.encode() for key in streams]
    args += [after.encode() for after in streams.values()]
    return command(args)


def stream_entries(reply: Any) -> Iterator[tuple[bytes, list[Entry]]]:
    """Each stream of an XREAD reply with its entries, fields as a dict; nothing for a reply without entries."""
    for key, entries in reply.items() if isinstance(reply, dict) else reply or ():
        yield key, [(entry_id, _pairs(fields)) for entry_id, fields in entries]


def _pairs(fields: list[bytes] | dict[bytes, bytes] | None) -> dict[bytes, bytes]:
    if isinstance(fields, dict):
        return fields
    fields = fields or []
    return dict(zip(fields[::2], fields[1::2], strict=True))


class Reads:
    """XREAD through one connection of `client`'s pool, held from one read to the next."""

    def __init__(self, client: Any) -> None:
        self.pool = client.connection_pool
        self._conn: Any = None

    async def xread(self, streams: dict[str, str], count: int) -> list[tuple[bytes, list[Entry]]]:
        """The entries after each stream's id (at most `count` each); raises RedisError or OSError, the
        connection given back."""
        conn = self._conn or await self.pool.get_connection()
        self._conn = None
        try:
            await conn.send_packed_command(pack_xread(streams, count), check_health=False)
            reply = await conn.read_response(disable_decoding=True)  # within the pool's socket timeout
        except BaseException:
            await conn.disconnect()
            await self.pool.release(conn)
            raise
        self._conn = conn
        return list(stream_entries(reply))

    async def close(self) -> None:
        """Give the connection back."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.pool.release(conn)
