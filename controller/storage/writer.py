"""The storage thread: every durable write of the controller happens here, off the event loop.

On a charger's SD card an fsync can take a second (issue 15). While the event loop waits on the
disk no CAN frame is read, no fault is reacted to and the watchdog is not pinged, so the loop
never touches the ledger's database: it *hands over* work (``post``) or asks for a result
(``await call``) and carries on. One thread runs the jobs one after another, in the order they
were handed over, on the one connection that the ledger and the store-and-forward outbox share
(so a session row and its outbox row still share a transaction). The connection is used by no
other thread once the storage thread runs.

Batching: the thread takes every job waiting at once, runs them, then runs the ``after_batch``
hooks (the ledger commits what the batch left pending, e.g. audit lines) before it says the
batch is processed. While a commit waits on a slow fsync, work piles up and the next batch
carries all of it in one commit: the slower the card, the fewer fsyncs per job.

Overflow (a disk that stalls for minutes): at most ``capacity`` jobs wait. A job handed over to
a full queue makes room by dropping the oldest *droppable* job (control-cycle records and
telemetry: the ledger's energy comes from the inverter's lifetime counters, so a dropped cycle
loses no counted energy); only when every waiting job must be kept (audit lines, events,
sessions) is the oldest job dropped. Every drop is counted per kind (``dropped``) and logged.

``processed(seq)`` resolves once job ``seq`` and the hooks after it have run (written, or failed
and logged): the aggregator link waits on it before an ack that says a setpoint was accepted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import structlog

from controller.storage.db import LedgerError

log = structlog.get_logger(component="storage")

T = TypeVar("T")

# 10 000 jobs: at the default 10 cycles per second, more than 15 minutes of a stalled disk
# (a cycle record is a few hundred bytes of snapshots: a few MB at most).
DEFAULT_CAPACITY: Final = 10_000
DROP_LOG_EVERY_S: Final = 60.0
# Failing lasts until no job or hook failed for this long: a ledger commits every 30 s and
# telemetry is stored every 10 s, so a disk still refusing writes fails again well within it.
RECOVERED_AFTER_S: Final = 60.0


class StorageFullError(LedgerError):
    """A job was dropped from the full storage queue before it ran."""


class StorageStoppedError(LedgerError):
    """The storage thread was stopped before the job could run."""


@dataclass(slots=True)
class _Job:
    seq: int
    kind: str
    run: Callable[[], Any]
    droppable: bool
    future: asyncio.Future[Any] | None = None


_Outcomes = list[tuple[asyncio.Future[Any], Any, BaseException | None]]


class StorageThread:
    """One thread for every durable write; see the module docstring."""

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY, name: str = "storage") -> None:
        if capacity < 1:
            raise ValueError(f"capacity: expected at least 1, found {capacity}")
        self.capacity = capacity
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._posted_seq = 0
        self._done_seq = 0  # written by the thread once a batch and its hooks ran
        self._stopping = False
        self._after_batch: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.dropped: collections.Counter[str] = collections.Counter()
        self._drop_logged_s = -DROP_LOG_EVERY_S
        self.batches = 0
        self.failures = 0
        self.last_error: str | None = None  # the last job or hook that raised
        self._failed_at_s: float | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    # -- handing over (event loop) ----------------------------------------------------------

    @property
    def posted_seq(self) -> int:
        """The number of the last job handed over."""
        return self._posted_seq

    @property
    def pending(self) -> int:
        """Jobs handed over and not yet taken by the thread."""
        with self._cond:
            return len(self._queue)

    @property
    def failing(self) -> str | None:
        """The last storage error, while one happened within ``RECOVERED_AFTER_S``."""
        failed_at_s = self._failed_at_s
        if failed_at_s is None or time.monotonic() - failed_at_s >= RECOVERED_AFTER_S:
            return None
        return self.last_error

    def after_batch(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` on the storage thread after every batch (before it counts as
        processed). It may raise: logged, and the batch still counts as processed."""
        self._after_batch.append(hook)

    def post(self, kind: str, run: Callable[[], object], *, droppable: bool = False) -> int:
        """Hand ``run`` over to the storage thread; returns its job number at once.

        ``run`` may raise: the error is logged and counted (``failures``, ``last_error``)."""
        return self._enqueue(kind, run, droppable, None)

    async def call(self, kind: str, run: Callable[[], T]) -> T:
        """Run ``run`` on the storage thread and return its result (or raise its error)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(kind, run, False, future)
        return await future

    async def processed(self, seq: int) -> None:
        """Return once job ``seq`` (and the hooks after its batch) ran, or the thread stopped."""
        loop = self._bind_loop()
        if seq <= self._done_seq or not self._thread.is_alive():
            return
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((seq, future))
        try:
            await future
        finally:
            if not future.done():
                future.cancel()
            self._waiters = [(s, f) for s, f in self._waiters if f is not future]

    async def drain(self) -> None:
        """Return once everything handed over so far was processed."""
        await self.processed(self._posted_seq)

    def close(self) -> None:
        """Refuse new jobs; the thread ends once what is queued was run (no waiting here)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def stop(self, timeout_s: float) -> bool:
        """Run what is queued, then end the thread; False if it did not end within
        ``timeout_s`` (a disk that hangs: what is still queued is lost, and logged)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error(
                "storage thread still writing at exit; what is queued is not written",
                queued=self.pending,
                timeout_s=timeout_s,
            )
            return False
        return True

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._waiters = []  # futures of an older loop can never be woken
        return loop

    def _enqueue(
        self, kind: str, run: Callable[[], Any], droppable: bool, future: asyncio.Future[Any] | None
    ) -> int:
        with contextlib.suppress(RuntimeError):  # handed over before the loop runs
            self._bind_loop()
        victim: _Job | None = None
        with self._cond:
            if self._stopping:
                raise StorageStoppedError(f"storage stopped; {kind} not written")
            if len(self._queue) >= self.capacity:
                victim = self._make_room()
            self._posted_seq += 1
            seq = self._posted_seq
            self._queue.append(_Job(seq, kind, run, droppable, future))
            self._cond.notify()
        if victim is not None:
            self._dropped(victim)
        return seq

    def _make_room(self) -> _Job:
        # Called with the lock held and the queue full.
        for index, job in enumerate(self._queue):
            if job.droppable:
                del self._queue[index]
                return job
        return self._queue.popleft()

    def _dropped(self, job: _Job) -> None:
        self.dropped[job.kind] += 1
        if job.future is not None and not job.future.done():
            job.future.set_exception(StorageFullError(f"storage queue full; {job.kind} dropped"))
        now_s = time.monotonic()
        if now_s - self._drop_logged_s >= DROP_LOG_EVERY_S:
            self._drop_logged_s = now_s
            log.error(
                "storage queue full: the disk is not keeping up; oldest work dropped",
                capacity=self.capacity,
                dropped=dict(self.dropped),
            )

    # -- the thread ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    break  # stopping and nothing left
                batch = list(self._queue)
                self._queue.clear()
            outcomes: _Outcomes = []
            for job in batch:
                try:
                    result = job.run()
                except Exception as exc:  # noqa: BLE001  one failed write must not end the thread
                    self._failed(job.kind, exc, logged=job.future is None)
                    if job.future is not None:
                        outcomes.append((job.future, None, exc))
                else:
                    if job.future is not None:
                        outcomes.append((job.future, result, None))
            for hook in self._after_batch:
                try:
                    hook()
                except Exception as exc:  # noqa: BLE001  as above
                    self._failed("after batch", exc, logged=True)
            self.batches += 1
            self._done_seq = batch[-1].seq
            self._tell_loop(outcomes)

    def record_failure(self, kind: str, exc: Exception) -> None:
        """On the storage thread: a job that handles its own storage error (and logs it) still
        says the disk refused, so ``failing`` (and the link's ``storage_failed``) follow at
        once, not only at the ledger's next commit."""
        self._failed(kind, exc, logged=False)

    def _failed(self, kind: str, exc: Exception, *, logged: bool) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.failures += 1
        self._failed_at_s = time.monotonic()
        if logged and error != self.last_error:
            log.error("storage write failed; the charger keeps running", job=kind, error=error)
        self.last_error = error

    def _tell_loop(self, outcomes: _Outcomes) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(self._settle, outcomes)

    def _settle(self, outcomes: _Outcomes) -> None:
        # On the event loop.
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        for waited, future in self._waiters:
            if waited <= self._done_seq and not future.done():
                future.set_result(None)
