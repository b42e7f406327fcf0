"""One read for many waiters: triggers of one triggerer that watch the same thing share each read of it.

A 500-node task group has 500 node triggers watching one build; each looks every poll interval, but the
build's status (or its task's XComs) is fetched at most once per interval for all of them. Entries are per
event loop (their locks belong to it) and go when their last user releases them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class SharedRead(Generic[T]):
    """The latest value of ``fetch``, fetched at most once per ``max_age`` seconds whoever asks."""

    fetch: Callable[[], Awaitable[T]]
    what: str
    users: int = 0
    read_at: float = float("-inf")
    data: T | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reads: int = 0  # fetches made, for tests and benchmarks

    async def read(self, max_age: float) -> T | None:
        """The latest value; a failed fetch keeps the last one (the next poll tries again)."""
        async with self.lock:
            if time.monotonic() - self.read_at >= max_age:
                self.reads += 1
                try:
                    self.data = await self.fetch()
                except Exception as err:
                    log.warning("Could not read %s: %s", self.what, err)
                self.read_at = time.monotonic()
            return self.data


_SHARED: dict[tuple[int, Hashable], SharedRead[Any]] = {}


def acquire(key: Hashable, fetch: Callable[[], Awaitable[T]], what: str) -> SharedRead[T]:
    """The shared read of ``key`` in the running event loop, made with ``fetch`` on first use.

    :param key: What is read (a channel's location, a build task of a DAG run).
    :param fetch: Reads it once.
    :param what: Names it in a warning when a read fails.
    """
    full = (id(asyncio.get_running_loop()), key)
    shared = _SHARED.get(full)
    if shared is None:
        shared = _SHARED[full] = SharedRead(fetch, what)
    shared.users += 1
    return shared


def release(key: Hashable, shared: SharedRead[Any]) -> None:
    """One user less; the last one removes the entry."""
    shared.users -= 1
    full = (id(asyncio.get_running_loop()), key)
    if shared.users <= 0 and _SHARED.get(full) is shared:
        del _SHARED[full]
