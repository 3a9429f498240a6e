"""Disk-backed store-and-forward spool: a `SampleBuffer` in SQLite (WAL mode, stdlib `sqlite3`).

One spool per connector, in its own directory (``publish.spool_dir``, default ``var/spool/<connector id>``):

    spool.sqlite3 (+ -wal, -shm)   the samples, one row each, keyed by an ever-increasing sequence number
    spool.lock                     an exclusive lock (flock): two processes never share one spool

Every `put` is one committed transaction, so a sample handed to the connector's publisher survives a crash
or a restart of the process; samples are deleted only by `ack`, which the publisher calls after the
broker's PUBACK. `peek` returns the oldest unacknowledged samples in the order they were put, so a replay
after an outage (or after a restart) is in order.

The spool is bounded by `max_samples`. When it is full, `when_full` decides: ``drop_oldest`` deletes the
oldest samples to make room (the newest data wins, the default), ``drop_newest`` refuses the incoming
samples (the oldest data wins). Either way `put` returns how many samples were dropped; the lifetime total
is kept in the spool (`dropped_total`) and survives restarts.

Durability: ``synchronous: normal`` (the default) commits to the WAL without an fsync per transaction: a
crash of the process loses nothing, a power loss can lose the last transactions. ``full`` fsyncs every
commit (a few ms each on an SSD).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import orjson

from oee_stream.bus import QUALITIES, Quality, Sample

WhenFull = Literal["drop_oldest", "drop_newest"]
Synchronous = Literal["normal", "full"]

DB_NAME = "spool.sqlite3"
LOCK_NAME = "spool.lock"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a late ack cannot hit a newer sample
    machine TEXT NOT NULL,
    signal  TEXT NOT NULL,
    ts      REAL NOT NULL,
    value   TEXT NOT NULL,                      -- JSON: keeps bool / int / float / str / null apart
    quality TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SpoolError(RuntimeError):
    """The spool cannot be opened (locked by another process, unreadable, from a newer version)."""


class DiskSpool:
    """Bounded, persistent, ordered sample buffer; implements `publisher.SampleBuffer`."""

    def __init__(
        self,
        directory: Path | str,
        max_samples: int = 100_000,
        when_full: WhenFull = "drop_oldest",
        *,
        synchronous: Synchronous = "normal",
    ) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be >= 1")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"when_full must be drop_oldest or drop_newest, not {when_full!r}")
        self.directory = Path(directory)
        self.max_samples = max_samples
        self.when_full: WhenFull = when_full
        self.path = self.directory / DB_NAME
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.directory}: {exc}") from exc
        self._lock_fd = self._acquire_dir_lock()
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            self._db.executescript(_SCHEMA)
            version = self._meta("schema_version")
            if version is None:
                self._set_meta("schema_version", SCHEMA_VERSION)
            elif version > SCHEMA_VERSION:
                raise SpoolError(f"{self.path}: spool schema {version} is newer than this version ({SCHEMA_VERSION})")
            self._count = int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
            self.dropped_total = self._meta("dropped") or 0
        except sqlite3.Error as exc:
            self._release_dir_lock()
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        except BaseException:
            self._release_dir_lock()
            raise

    # ------------------------------------------------------------------ SampleBuffer

    def put(self, samples: Iterable[Sample]) -> int:
        rows = [(s.machine, s.signal, float(s.ts), orjson.dumps(s.value).decode(), s.quality) for s in samples]
        if not rows:
            return 0
        with self._lock, self._tx():
            dropped = 0
            if len(rows) > self.max_samples:
                # more than fits at all: keep the newest (drop_oldest) or the oldest (drop_newest) of them
                extra = len(rows) - self.max_samples
                rows = rows[extra:] if self.when_full == "drop_oldest" else rows[: self.max_samples]
                dropped += extra
            over = self._count + len(rows) - self.max_samples
            if over > 0:
                if self.when_full == "drop_oldest":
                    cur = self._db.execute(
                        "DELETE FROM samples WHERE seq IN (SELECT seq FROM samples ORDER BY seq LIMIT ?)", (over,)
                    )
                    self._count -= cur.rowcount
                    dropped += cur.rowcount
                else:
                    keep = max(0, len(rows) - over)
                    dropped += len(rows) - keep
                    rows = rows[:keep]
            if rows:
                self._db.executemany(
                    "INSERT INTO samples (machine, signal, ts, value, quality) VALUES (?, ?, ?, ?, ?)", rows
                )
                self._count += len(rows)
            if dropped:
                self.dropped_total += dropped
                self._set_meta("dropped", self.dropped_total)
            return dropped

    def peek(self, limit: int) -> list[tuple[int, Sample]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, machine, signal, ts, value, quality FROM samples ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        out: list[tuple[int, Sample]] = []
        for seq, machine, signal, ts, value, quality in rows:
            q: Quality = quality if quality in QUALITIES else "bad"
            out.append((int(seq), Sample(machine, signal, float(ts), orjson.loads(value), q)))
        return out

    def ack(self, seqs: Iterable[int]) -> None:
        keys = [(int(q),) for q in seqs]
        if not keys:
            return
        with self._lock, self._tx():
            before = self._db.total_changes
            self._db.executemany("DELETE FROM samples WHERE seq = ?", keys)
            self._count -= self._db.total_changes - before

    def __len__(self) -> int:
        return self._count

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the database (checkpointing the WAL) and release the directory lock; idempotent."""
        db = getattr(self, "_db", None)
        if db is not None:
            with self._lock, contextlib.suppress(sqlite3.Error):
                db.close()
            self._db = None  # type: ignore[assignment]
        self._release_dir_lock()

    def __enter__(self) -> DiskSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskSpool({str(self.directory)!r}, {self._count}/{self.max_samples}, {self.when_full})"

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _tx(self) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _acquire_dir_lock(self) -> int | None:
        try:
            import fcntl
        except ImportError:  # not on POSIX: no cross-process guard
            return None
        lock_path = self.directory / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolError(
                f"spool {self.directory} is in use by another process (two connectors with the same id, or "
                f"the same spool_dir?)"
            ) from exc
        return fd

    def _release_dir_lock(self) -> None:
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the flock
