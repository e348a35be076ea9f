"""Durable buffering of usage events the API could not take: a SQLite file and a flusher thread.

An event that cannot be delivered (the server down, a network error, a 5xx or 429 after the retries) is
written to the file as the exact body that was sent, its idempotency key and timestamp included, and
delivered later in the order it was written. Resending the same body is safe: the API records an event
key once per customer and answers a repeat ``duplicate``, so an event whose first answer was lost is not
recorded twice. Once anything is waiting, new events queue behind it rather than overtaking it.

The file survives a process restart: a client opened on it later delivers what is left. Several
processes may share one file (SQLite serialises their writes; an event two of them send is recorded
once). An event the API refuses for good (``refused``, or invalid inside a batch) is set aside in the
same file with its code, never resent on its own and never dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billing_client.errors import (
    APIConnectionError,
    APIError,
    BillingError,
    BufferFull,
    IdempotencyKeyReused,
    InvalidBatch,
    RateLimited,
)
from billing_client.types import EventResult

logger = logging.getLogger("billing_client.buffer")

# Failures that say "not now" rather than "never": the events stay for the next attempt.
TRANSIENT_FAILURES = (APIConnectionError, APIError, RateLimited)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL,
    buffered_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refused_events (
    seq INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    refused_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class RefusedEvent:
    event: dict[str, Any]
    code: str
    message: str
    refused_at: str


def buffered_result(event: dict[str, Any]) -> EventResult:
    return {
        "idempotency_key": event["idempotency_key"],
        "status": "buffered",
        "id": None,
        "code": None,
        "message": None,
    }


class EventBuffer:
    """The SQLite file. Each operation opens its own connection, so any thread or process may use it."""

    def __init__(self, path: str | os.PathLike[str], *, max_events: int) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1.")
        self.path = os.fspath(path)
        self.max_events = max_events
        with self._connection() as connection:
            # WAL lets the flusher read while a request thread appends; FULL syncs each commit to disk,
            # so an event said to be buffered survives a crash of the machine too.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA synchronous=FULL")
            yield connection
        finally:
            connection.close()

    def append(self, events: Sequence[dict[str, Any]]) -> None:
        """Keep ``events`` in order, all or none; ``BufferFull`` when they would pass the bound."""
        now = _now()
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                (pending,) = connection.execute("SELECT count(*) FROM pending_events").fetchone()
                if pending + len(events) > self.max_events:
                    raise BufferFull(
                        f"The event buffer at {self.path} holds {pending} of at most {self.max_events} "
                        f"events and cannot take {len(events)} more; nothing of this call was buffered. "
                        "Deliver them (is the billing API reachable?) or raise buffer_max_events."
                    )
                connection.executemany(
                    "INSERT INTO pending_events (body, buffered_at) VALUES (?, ?)",
                    [(json.dumps(event, separators=(",", ":")), now) for event in events],
                )
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def pending_count(self) -> int:
        with self._connection() as connection:
            (count,) = connection.execute("SELECT count(*) FROM pending_events").fetchone()
        return int(count)

    def oldest(self, limit: int) -> list[tuple[int, dict[str, Any]]]:
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT seq, body FROM pending_events ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(seq, json.loads(body)) for seq, body in rows]

    def remove(self, seqs: Sequence[int]) -> None:
        with self._connection() as connection:
            connection.executemany("DELETE FROM pending_events WHERE seq = ?", [(seq,) for seq in seqs])

    def set_aside(self, refusals: Sequence[tuple[int, str, str]]) -> None:
        """Move events the API refused for good, ``(seq, code, message)``, out of the queue."""
        now = _now()
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            for seq, code, message in refusals:
                connection.execute(
                    "INSERT OR REPLACE INTO refused_events (seq, body, code, message, refused_at) "
                    "SELECT seq, body, ?, ?, ? FROM pending_events WHERE seq = ?",
                    (code, message, now, seq),
                )
                connection.execute("DELETE FROM pending_events WHERE seq = ?", (seq,))
            connection.execute("COMMIT")

    def refused_events(self) -> list[RefusedEvent]:
        with self._connection() as connection:
            rows = connection.execute(
                "SELECT body, code, message, refused_at FROM refused_events ORDER BY seq"
            ).fetchall()
        return [
            RefusedEvent(json.loads(body), code, message, refused_at)
            for body, code, message, refused_at in rows
        ]


class BufferFlusher:
    """Delivers the buffer's events in order, in batches, from a daemon thread and on ``flush()``."""

    def __init__(
        self,
        buffer: EventBuffer,
        *,
        send_batch: Callable[[list[dict[str, Any]]], list[EventResult]],
        interval: float,
        batch_size: int = 1000,
        max_backoff: float = 60.0,
    ) -> None:
        self.buffer = buffer
        self._send_batch = send_batch
        self._interval = interval
        self._batch_size = batch_size
        self._max_backoff = max_backoff
        self._pass_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="billing-event-flusher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def flush(self) -> int:
        """Deliver all that can be delivered now; returns how many events are still waiting."""
        with self._pass_lock:
            while self._deliver_next_batch():
                pass
        return self.buffer.pending_count()

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            if failures:
                # Backing off: new events do not cut the wait short, or a server that is down would be
                # asked again for every event the application writes meanwhile.
                backoff = min(self._max_backoff, self._interval * 2.0 ** (failures - 1))
                self._stopping.wait(backoff * (0.5 + random.random() / 2))
            else:
                self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                remaining = self.flush()
            except Exception:
                # The thread must outlive any one failure (a locked file, a disk error): the events are
                # still on disk, and the next pass tries again.
                logger.exception("Delivering buffered events failed")
                failures += 1
                continue
            failures = failures + 1 if remaining else 0

    def _deliver_next_batch(self) -> bool:
        """Send the oldest events once. True when the queue moved and there may be more to send."""
        batch = self.buffer.oldest(self._batch_size)
        if not batch:
            return False
        seqs = [seq for seq, _ in batch]
        events = [event for _, event in batch]
        try:
            results = self._send_batch(events)
        except TRANSIENT_FAILURES as failure:
            logger.info("Buffered events not delivered yet (%d waiting): %s", len(batch), failure)
            return False
        except (InvalidBatch, IdempotencyKeyReused) as refusal:
            faults = {int(fault["index"]): fault for fault in refusal.events if "index" in fault}
            if not faults:
                logger.error("The API refused a batch of buffered events: %s", refusal)
                return False
            self._set_aside(
                [
                    (seqs[index], str(fault.get("code")), str(fault.get("message")))
                    for index, fault in faults.items()
                ],
                events,
                seqs,
            )
            return True
        except BillingError as failure:
            # A wrong or revoked API key, say: nothing here can fix it, and the events must wait for an
            # operator rather than be dropped.
            logger.error("Buffered events not delivered (%d waiting): %s", len(batch), failure)
            return False
        delivered = [seq for seq, result in zip(seqs, results, strict=True) if result["status"] != "refused"]
        refused = [
            (seq, str(result.get("code")), str(result.get("message")))
            for seq, result in zip(seqs, results, strict=True)
            if result["status"] == "refused"
        ]
        self.buffer.remove(delivered)
        if refused:
            self._set_aside(refused, events, seqs)
        return True

    def _set_aside(
        self, refusals: list[tuple[int, str, str]], events: list[dict[str, Any]], seqs: list[int]
    ) -> None:
        by_seq = dict(zip(seqs, events, strict=True))
        for seq, code, message in refusals:
            event = by_seq[seq]
            logger.warning(
                "Buffered event %s of customer %s refused (%s: %s); set aside, not resent",
                event.get("idempotency_key"),
                event.get("customer"),
                code,
                message,
            )
        self.buffer.set_aside(refusals)


def _now() -> str:
    return datetime.now(UTC).isoformat()
