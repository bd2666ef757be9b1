"""Waking event-stream readers in the event loop when the worker thread records something new.

The worker appends events under the engine's lock and calls notify() from its own thread; readers await wait()
in the loop. A reader takes its snapshot and registers its future without awaiting in between, so a notify can
never fall between the two and be lost (the wake-up itself runs in the loop, after the reader awaits).
"""

from __future__ import annotations

import asyncio
import contextlib


class EventHub:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, list[asyncio.Future]] = {}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, key: str) -> None:
        """Thread-safe: wake everyone waiting on `key`."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(self._wake, key)

    def _wake(self, key: str) -> None:
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(None)

    def waiter(self, key: str) -> asyncio.Future:
        """Register interest in `key` (in the loop, before awaiting); await the result to sleep until notified."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(future)
        return future

    def discard(self, key: str, future: asyncio.Future) -> None:
        waiters = self._waiters.get(key)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[key]
