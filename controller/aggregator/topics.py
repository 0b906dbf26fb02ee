"""The MQTT topics of one charger, under its configured prefix (docs/mqtt.md, "Topics")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the link uses, under the configured prefix."""

    setpoint: str  # in: aggregator -> charger
    ack: str
    status: str  # retained
    telemetry: str
    availability: str  # retained; also the Last Will
    event: str
    session: str  # the ledger's session records
    price_schedule: str  # in: aggregator -> charger
    price_event: str  # in: peak events and their cancellations
    price_ack: str

    def for_record(self, kind: str) -> str:
        """The topic of a stored record's kind."""
        return {"telemetry": self.telemetry, "event": self.event, "session": self.session}[kind]

    @classmethod
    def under(cls, prefix: str) -> Topics:
        base = prefix.rstrip("/")
        return cls(
            setpoint=f"{base}/setpoint",
            ack=f"{base}/ack",
            status=f"{base}/status",
            telemetry=f"{base}/telemetry",
            availability=f"{base}/availability",
            event=f"{base}/event",
            session=f"{base}/session",
            price_schedule=f"{base}/price_schedule",
            price_event=f"{base}/price_event",
            price_ack=f"{base}/price_ack",
        )
