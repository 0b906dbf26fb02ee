"""The ledger as the daemon sees it: every call hands work to the storage thread and returns.

``ThreadedLedger`` is the daemon's ``Recorder`` (one ``record`` per control cycle) and the
aggregator link's ``AuditSink``. The ``Ledger`` itself, its connection and the outbox on that
connection are used on the storage thread only (``controller/storage/writer.py``), so a commit
that waits a second on an SD card's fsync never holds up the control loop (issue 15).
"""

from __future__ import annotations

from controller.core.snapshots import InverterState, VehicleState
from controller.ledger.ledger import Ledger
from controller.links import ControlReport, SetpointAudit
from controller.storage.writer import StorageThread


class ThreadedLedger:
    """A ``Ledger`` driven from the event loop through a ``StorageThread``."""

    def __init__(self, ledger: Ledger, storage: StorageThread) -> None:
        self.ledger = ledger
        self.storage = storage
        # Audit lines, session changes and trips are committed once per batch, not per call.
        storage.after_batch(ledger.commit_urgent)

    def record(
        self, vehicle: VehicleState | None, inverter: InverterState | None, report: ControlReport
    ) -> None:
        """Hand one control cycle over. Droppable when a stalled disk filled the queue: energy
        comes from the inverter's lifetime counters, so a dropped cycle loses no counted kWh."""
        ledger = self.ledger
        self.storage.post("cycle", lambda: ledger.record(vehicle, inverter, report), droppable=True)

    def audit(self, entry: SetpointAudit) -> None:
        """An ``AuditSink``: the line is committed after the batch it arrives in."""
        self.storage.post("audit", lambda: self.ledger.queue_audit(entry))

    async def flush(self) -> None:
        """Commit what is pending, once everything handed over before was processed."""
        await self.storage.call("flush", self.ledger.flush)
