"""Every Lua script, loaded one way and called through typed functions.

A script lives in `events/store/lua/<name>.lua`. Its first line may name the shared helpers it uses
(`-- helpers: emit budget` puts `_emit.lua` and `_budget.lua` in front of it). For each script one function in
the `*_scripts` modules beside this one takes named arguments, declares every key the script reads or writes,
and says how the reply becomes a dataclass or an enum: it returns a `Call`. `Scripts` (blocking clients) and
`AsyncScripts` (asyncio clients) run a call by EVALSHA, loading the script on a NOSCRIPT reply, and hand back
the typed result. No script builds a key name from its arguments, so each one's slot is known from its KEYS.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

from redis.exceptions import NoScriptError

LUA = Path(__file__).with_name("lua")
_HELPERS = re.compile(r"^-- helpers: ([a-z_ ]+)$")

T = TypeVar("T")
Arg = str | int | float


@dataclass(frozen=True)
class Script:
    """One script's full source (helpers included) and its SHA1, as Redis knows it."""

    name: str
    source: str
    sha: str


@functools.cache
def script(name: str) -> Script:
    """The script `lua/<name>.lua` with the helpers its first line names in front."""
    body = (LUA / f"{name}.lua").read_text()
    found = _HELPERS.match(body.split("\n", 1)[0])
    helpers = found.group(1).split() if found else []
    source = "".join((LUA / f"_{helper}.lua").read_text() for helper in helpers) + body
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


def script_names() -> list[str]:
    """Every script (helpers left out), by name."""
    return sorted(p.stem for p in LUA.glob("*.lua") if not p.stem.startswith("_"))


@dataclass(frozen=True)
class Call(Generic[T]):
    """One run of a script: the keys it touches, its arguments, and how its reply becomes a `T`."""

    script: Script
    keys: tuple[str, ...]
    args: tuple[Arg, ...]
    decode: Callable[[Any], T]


def call(name: str, keys: Sequence[str], args: Sequence[Arg], decode: Callable[[Any], T]) -> Call[T]:
    """A `Call` of the script `name`."""
    return Call(script(name), tuple(keys), tuple(args), decode)


class Scripts:
    """Runs calls on a blocking client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def run(self, c: Call[T]) -> T:
        """Run the script and decode its reply."""
        try:
            reply = self.client.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)
        except NoScriptError:
            self.client.script_load(c.script.source)
            reply = self.client.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)
        return c.decode(reply)


class AsyncScripts:
    """Runs calls on an asyncio client."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def run(self, c: Call[T]) -> T:
        """Run the script and decode its reply."""
        try:
            reply = await self.client.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)
        except NoScriptError:
            await self.client.script_load(c.script.source)
            reply = await self.client.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)
        return c.decode(reply)
