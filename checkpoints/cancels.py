"""Cancel requests in Postgres: how an operator stops a run that another process runs.

`warden cancel` cannot reach into the process running a thread, but that process
checks for a request at every node boundary (`nodes.cancellable`). A request stays
pending until the run's `halt` node consumes it: it names the thread, not a run, and
is stored only while some process holds the thread's lock.

Storing a request also sends a NOTIFY, so a process need not ask the database at every
boundary: a pool opened by `open_pool` has a `CancelWatch` that LISTENs on its own
connection. Once a thread has been checked in the database while the watch was
listening, later checks (and the consume at `halt`) only look at what the watch has
heard; they go back to the database when a notification for the thread came in, when
the last check found a request, when one may be waiting unread on the socket, and
whenever the watch is not listening (not started yet, or its connection lost: it
reconnects, and every thread is checked afresh). A request committed just before a
check whose NOTIFY has not reached the socket yet is seen at the next boundary, as a
request committed just after a database check would be.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypedDict

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row

from checkpoints.db import Pool, has_unread_input

logger = logging.getLogger(__name__)

CHANNEL = "warden_cancel"
WATCHED_THREADS = 10_000
"""Threads per watch whose last database check it remembers."""
RECONNECT_SECONDS = (0.5, 30.0)
"""First and longest wait before a lost watch connection is opened again."""
UNCHECKED = 0
"""The generation recorded for a thread whose database check is under way (never live)."""


class CancelRequest(TypedDict):
    """A pending request to stop a thread's run."""

    requested_by: str
    reason: str


Lookup = Callable[[Pool, str], Awaitable[CancelRequest | None]]
"""Read or consume a thread's request in the database."""


def channel_key(thread_id: str) -> str:
    """Return a thread's NOTIFY payload: a digest, so any thread id fits the 8000-byte limit."""
    return hashlib.md5(thread_id.encode(), usedforsecurity=False).hexdigest()


class CancelWatch:
    """LISTEN for cancel requests on one connection of its own, for one pool's users.

    `generation` counts the times the watch started listening; it is None while the
    watch is not listening. A thread checked in the database during generation g needs
    no further check until a notification for it arrives or g ends: a request stored
    after that check was made is notified to this connection.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.generation: int | None = None
        self._generations = 0
        self._checked: OrderedDict[str, int] = OrderedDict()
        self._heard: set[str] = set()
        self._conn: AsyncConnection[DictRow] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening in the background (once; the caller's event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="warden-cancel-watch")

    async def stop(self) -> None:
        """Stop listening and close the watch's connection."""
        task, self._task = self._task, None
        self.generation = None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        delay = RECONNECT_SECONDS[0]
        while True:
            try:
                # The pool's own connection settings (psycopg_pool resolves them the
                # same way for each connection it opens).
                conninfo = await self.pool._resolve_conninfo()
                kwargs = await self.pool._resolve_kwargs()
                async with await AsyncConnection.connect(
                    conninfo, **{**kwargs, "autocommit": True, "row_factory": dict_row}
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._conn = conn
                    self._generations += 1
                    self.generation = self._generations
                    delay = RECONNECT_SECONDS[0]
                    async for notify in conn.notifies():
                        if notify.payload in self._checked:
                            self._heard.add(notify.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: poll until it is back
                logger.info("cancel watch lost its connection (%s); polling meanwhile", exc)
            finally:
                self.generation = None
                self._conn = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_SECONDS[1])

    def _live(self) -> int | None:
        """Return the generation if listening with nothing unread on the socket, else None."""
        conn, generation = self._conn, self.generation
        if conn is None or generation is None or conn.closed:
            return None
        # Input on the socket may be a notification the watch task has not read yet.
        return None if has_unread_input(conn) else generation

    def heard(self, thread_id: str) -> None:
        """Note a request for the thread (this process stored it, or a NOTIFY came)."""
        key = channel_key(thread_id)
        if key in self._checked:
            self._heard.add(key)

    async def lookup(
        self, thread_id: str, in_db: Lookup, *, consumes: bool = False
    ) -> CancelRequest | None:
        """Run `in_db` (read the thread's request, or consume it) only if one may exist."""
        key = channel_key(thread_id)
        generation = self._live()
        if generation is not None and self._checked.get(key) == generation and key not in self._heard:
            return None
        self._heard.discard(key)
        if generation is not None:
            # Heard from now on: a request committed after the query's snapshot is
            # notified while the query runs. Not yet checked (UNCHECKED) until it returns.
            self._checked[key] = UNCHECKED
            self._checked.move_to_end(key)
            while len(self._checked) > WATCHED_THREADS:
                self._heard.discard(self._checked.popitem(last=False)[0])
        request = await in_db(self.pool, thread_id)
        if generation is not None:
            if request is not None and not consumes:
                self._heard.add(key)  # still stored: the next lookup must ask again
            self._checked[key] = generation
        return request


# One watch per pool that `open_pool` opened (it starts and stops it); keyed weakly so a
# watch goes with its pool. Other pools have none and every check asks the database.
_watches: weakref.WeakKeyDictionary[Pool, CancelWatch] = weakref.WeakKeyDictionary()


def watch_cancels(pool: Pool) -> CancelWatch:
    """Give the pool a cancel watch (started on first use); return it."""
    return _watches.setdefault(pool, CancelWatch(pool))


async def unwatch_cancels(pool: Pool) -> None:
    """Stop the pool's cancel watch, if it has one."""
    watch = _watches.pop(pool, None)
    if watch is not None:
        await watch.stop()


async def request_cancel(pool: Pool, thread_id: str, *, requested_by: str, reason: str) -> None:
    """Store (or refresh) the request to cancel the thread's running run, and notify
    the processes watching (the NOTIFY is sent when the request commits)."""
    async with pool.connection() as conn, conn.pipeline():  # one round trip, one transaction
        await conn.execute(
            """
            INSERT INTO warden_cancel_requests (thread_id, requested_by, reason)
            VALUES (%s, %s, %s)
            ON CONFLICT (thread_id) DO UPDATE
            SET requested_at = now(), requested_by = EXCLUDED.requested_by,
                reason = EXCLUDED.reason
            """,
            (thread_id, requested_by, reason),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, channel_key(thread_id)))
    watch = _watches.get(pool)
    if watch is not None:  # this process's own runs need not wait for the NOTIFY
        watch.heard(thread_id)


async def _one_request(pool: Pool, sql: str, thread_id: str) -> CancelRequest | None:
    """Run a statement returning at most one request row for the thread."""
    async with pool.connection() as conn:
        row = await (await conn.execute(sql, (thread_id,))).fetchone()
    return (
        None
        if row is None
        else CancelRequest(requested_by=row["requested_by"], reason=row["reason"])
    )


async def pending_cancel(pool: Pool, thread_id: str) -> CancelRequest | None:
    """Return the thread's pending cancel request, if any: from the pool's cancel watch
    when it can tell, else with one indexed lookup."""
    return await _lookup(pool, thread_id, _pending_in_db, consumes=False)


async def consume_cancel(pool: Pool, thread_id: str) -> CancelRequest | None:
    """Delete the thread's pending request and return it: the run has honoured it.

    Without a round trip when the pool's cancel watch can tell there is none."""
    return await _lookup(pool, thread_id, _consume_in_db, consumes=True)


async def _lookup(
    pool: Pool, thread_id: str, in_db: Lookup, *, consumes: bool
) -> CancelRequest | None:
    watch = _watches.get(pool)
    if watch is None:
        return await in_db(pool, thread_id)
    watch.start()
    return await watch.lookup(thread_id, in_db, consumes=consumes)


async def _pending_in_db(pool: Pool, thread_id: str) -> CancelRequest | None:
    return await _one_request(
        pool,
        "SELECT requested_by, reason FROM warden_cancel_requests WHERE thread_id = %s",
        thread_id,
    )


async def _consume_in_db(pool: Pool, thread_id: str) -> CancelRequest | None:
    return await _one_request(
        pool,
        "DELETE FROM warden_cancel_requests WHERE thread_id = %s RETURNING requested_by, reason",
        thread_id,
    )


async def purge_cancel_requests(conn: AsyncConnection[DictRow], thread_ids: Sequence[str]) -> int:
    """Delete the cancel requests of pruned threads (a retention hook)."""
    cur = await conn.execute(
        "DELETE FROM warden_cancel_requests WHERE thread_id = ANY(%s)", (list(thread_ids),)
    )
    return cur.rowcount
