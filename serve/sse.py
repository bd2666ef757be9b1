"""Server-sent events: a job's events as an event stream, with keep-alive comments while nothing happens."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from .jobs import JobEvent

HEARTBEAT_SECONDS = 15.0  # below the idle timeouts of common proxies


def format_event(event: JobEvent) -> str:
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {json.dumps(event.data, separators=(',', ':'))}\n\n"


async def event_stream(events: AsyncIterator[JobEvent], heartbeat: float = HEARTBEAT_SECONDS) -> AsyncIterator[str]:
    iterator = aiter(events)
    pending = asyncio.ensure_future(anext(iterator))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=heartbeat)
            if not done:
                yield ": keep-alive\n\n"
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            yield format_event(event)
            pending = asyncio.ensure_future(anext(iterator))
    finally:
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await pending
        with contextlib.suppress(Exception):
            await iterator.aclose()
