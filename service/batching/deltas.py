"""Text deltas that pile up while the caller is busy go out as one message.

Each gRPC stream message costs the server a write (a tenth of a millisecond
or more in grpc.aio), so forwarding a fast stream delta by delta makes the
writes, not the provider, set the pace. `join_waiting_text` reads the source
in its own task; whenever the caller asks for the next item it gets every
text delta that has arrived since, joined. A slow provider's deltas still go
out one by one, as soon as each arrives: nothing waits for company.

Only text is read ahead. After a non-text item (the final answer) the reading
task waits until the caller has taken it and asked for the next item, so the
source's code after yielding that item runs only once the caller has sent
it on, and not at all if the caller goes away first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class _Failed:
    error: Exception


class _Done:
    pass


_DONE = _Done()


@dataclass
class _Pump(Generic[T]):
    """Reads `source` into `queue` until it ends, fails or is cancelled.

    Text is read ahead; after any other item it waits for `taken`.
    """

    source: AsyncGenerator[str | T, None]
    queue: asyncio.Queue[str | T | _Failed | _Done]
    taken: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        try:
            async with aclosing(self.source):
                async for item in self.source:
                    self.queue.put_nowait(item)
                    if not isinstance(item, str):
                        await self.taken.wait()
                        self.taken.clear()
        except Exception as error:  # handed to the reader, in order
            self.queue.put_nowait(_Failed(error))
            return
        self.queue.put_nowait(_DONE)


async def join_waiting_text(
    source: AsyncGenerator[str | T, None],
) -> AsyncGenerator[str | T, None]:
    """`source`'s items in order, with consecutive waiting `str` items joined into one.

    Non-text items pass through unchanged. An exception from `source` is raised
    after the text that came before it. Closing this iterator early cancels
    the reading task, which closes `source`.
    """
    queue: asyncio.Queue[str | T | _Failed | _Done] = asyncio.Queue()
    pump = _Pump(source, queue)
    reader = asyncio.create_task(pump.run())
    try:
        while True:
            waiting = [await queue.get()]
            while not queue.empty():
                waiting.append(queue.get_nowait())
            text: list[str] = []
            for item in waiting:
                if isinstance(item, str):
                    text.append(item)
                    continue
                if text:
                    yield "".join(text)
                    text = []
                if isinstance(item, _Done):
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
                pump.taken.set()
            if text:
                yield "".join(text)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
