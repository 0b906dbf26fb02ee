"""The controller's config (one YAML file): ``Config`` and its sections, as frozen models.

``load_config`` either returns a complete, valid ``Config`` (with the register map it names
checked too) or raises ``ConfigError`` carrying every problem found, each located by file, line
and key path (``controller.config.loader``). docs/configuration.md is generated from these models
(``controller.configdoc``); ``json_schema`` gives editors the same schema.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from controller.config.loader import Loc, Section, load_file, validate_text
from controller.config.register_map import load_register_map
from controller.economics.tariff import Band, DayType, PeakEvent, Tariff, TariffPeriod
from controller.economics.tariff import tariff_problems as _tariff_problems
from controller.errors import ConfigError, ConfigProblem

# Identifiers end up in MQTT topics and file names: keep them to a safe alphabet.
_IDENT = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


# --- site -------------------------------------------------------------------------------------


class SiteConfig(Section):
    """Who this charger is."""

    site_id: Annotated[str, Field(pattern=_IDENT, description="Site identifier (topic-safe).")]
    charger_id: Annotated[
        str, Field(pattern=_IDENT, description="Charger identifier, unique within the site.")
    ]
    timezone: str = Field(
        default="UTC", description="IANA time zone for departure times and tariff windows."
    )

    @model_validator(mode="after")
    def _known_timezone(self) -> Self:
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone: expected an IANA time zone such as 'Europe/Amsterdam', "
                f"found {self.timezone!r}"
            ) from None
        return self


# --- vehicle (CAN) ----------------------------------------------------------------------------

# CHAdeMO: 500 kbit/s; GB/T 27930: 250 kbit/s (J1939-11). A generic BMS (protocol dbc) has no
# protocol bitrate: the config gives it.
DEFAULT_BITRATE_BPS = {"chademo": 500_000, "gbt27930": 250_000}

LineName = Literal[
    "plugged",
    "k",
    "emergency_stop",
    "fault_reset",
    "insulation_ok",
    "d1",
    "d2",
    "contactors",
    "lock",
]

# The lines a protocol's session cannot run without (the lock is optional: some connectors lock
# in hardware). CHAdeMO: d1 -> k -> d2 sequence; GB/T 27930: CC1 (plugged), K3/K4 auxiliary power
# (d1) and K1/K2 (contactors). Both: the insulation monitor's OK relay (insulation_ok), since
# IEC 61851-23 and GB/T 18487.1 (B.3.2) allow no energy transfer without a passed insulation check.
REQUIRED_LINES: dict[str, tuple[str, ...]] = {
    "chademo": ("plugged", "k", "insulation_ok", "d1", "d2", "contactors"),
    "gbt27930": ("plugged", "insulation_ok", "d1", "contactors"),
}


class CanConfig(Section):
    """The CAN interface that reaches the vehicle."""

    interface: Literal["socketcan", "udp_multicast", "virtual"] = Field(
        default="socketcan",
        description="python-can interface: socketcan on the charger, udp_multicast or virtual "
        "for simulation.",
    )
    channel: str = Field(
        default="can0", min_length=1, description="e.g. can0, vcan0, or a multicast group."
    )
    bitrate_bps: int | None = Field(
        default=None,
        ge=10_000,
        le=1_000_000,
        description="Bus bitrate; empty means the protocol's own (CHAdeMO 500k, GB/T 250k).",
    )
    reconnect_delay_s: float = Field(
        default=1.0,
        ge=0.1,
        le=60.0,
        description="A CAN interface or board lines that cannot be opened (e.g. a CAN HAT whose "
        "driver comes up after the daemon) are tried again this often.",
    )


def _offset(description: str) -> Any:
    """A GPIO line offset, or None for a line not wired (``gpioinfo`` numbers lines from 0)."""
    return Field(default=None, ge=0, le=1023, description=description)


class GpioOffsets(Section):
    """Line offsets on the GPIO chip (``gpioinfo`` lists them); leave out a line not wired."""

    plugged: int | None = _offset(
        "Input: connector in the vehicle inlet (CHAdeMO proximity, GB/T CC1)."
    )
    k: int | None = _offset("Input: CHAdeMO charge-permission line k, pulled by the vehicle.")
    emergency_stop: int | None = _offset(
        "Input: the charger's emergency stop switch (usually active_low)."
    )
    fault_reset: int | None = _offset(
        "Input: a reset push-button; pressing it is the deliberate act that resets a latched "
        "emergency stop or a manual-reset fault (docs/safety.md)."
    )
    insulation_ok: int | None = _offset(
        "Input: the insulation monitor's (IMD) OK relay on the DC output, asserted while the "
        "insulation resistance is above its alarm threshold. Wire the fail-safe contact "
        "(closed = OK) so a broken wire reads as a fault. Required for CHAdeMO and GB/T: no "
        "insulation OK, no energy transfer (docs/vehicle.md)."
    )
    d1: int | None = _offset("Output: CHAdeMO sequence signal d1; GB/T auxiliary power (K3, K4).")
    d2: int | None = _offset("Output: CHAdeMO sequence signal d2.")
    contactors: int | None = _offset("Output: the charger's DC output contactors (GB/T K1, K2).")
    lock: int | None = _offset("Output: connector lock.")

    def wired(self) -> dict[str, int]:
        """Line name -> offset for every line given."""
        return {name: offset for name, offset in self.model_dump().items() if offset is not None}

    @model_validator(mode="after")
    def _one_line_per_offset(self) -> Self:
        seen: dict[int, str] = {}
        for name, offset in self.wired().items():
            if offset in seen:
                raise ValueError(
                    f"expected each line on its own offset, found {seen[offset]} and {name} "
                    f"both at {offset}"
                )
            seen[offset] = name
        return self


class LinesConfig(Section):
    """The charger board's digital lines: GPIO on a real charger, a shared file for simulation."""

    kind: Literal["gpio", "simulated"] = Field(
        description="gpio: libgpiod on the board (needs the 'gpio' extra); simulated: a file "
        "shared with `python -m hil.vehicle --lines PATH`."
    )
    chip: str | None = Field(
        default=None,
        pattern=r"^/dev/gpiochip[0-9]+$",
        description="kind gpio: the GPIO chip, e.g. /dev/gpiochip0.",
    )
    offsets: GpioOffsets | None = Field(
        default=None, description="kind gpio: which line offset each signal is on."
    )
    active_low: list[LineName] = Field(
        default_factory=list,
        description="kind gpio: lines asserted at the low level (e.g. an optocoupled input).",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        description="kind simulated: the shared file; it and its directory are created.",
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> Self:
        if self.kind == "gpio":
            if self.chip is None:
                raise ValueError("kind is 'gpio': expected chip (e.g. /dev/gpiochip0), found none")
            if self.offsets is None:
                raise ValueError("kind is 'gpio': expected an 'offsets:' section, found none")
            if self.path is not None:
                raise ValueError(f"kind is 'gpio': expected no path, found {self.path!r}")
            unwired = [name for name in self.active_low if name not in self.offsets.wired()]
            if unwired:
                raise ValueError(
                    "expected active_low to name lines that have an offset, found "
                    + ", ".join(unwired)
                )
            if len(set(self.active_low)) != len(self.active_low):
                raise ValueError("expected each line once in active_low, found a repeat")
        else:
            if self.path is None:
                raise ValueError("kind is 'simulated': expected path, found none")
            extra = [
                name
                for name, value in (
                    ("chip", self.chip),
                    ("offsets", self.offsets),
                    ("active_low", self.active_low or None),
                )
                if value is not None
            ]
            if extra:
                raise ValueError(
                    f"kind is 'simulated': expected no GPIO settings, found {', '.join(extra)}"
                )
        return self


class ChargerRatingsConfig(Section):
    """What the charger announces to the vehicle. Defaults are a small charge-only charger."""

    max_output_voltage_v: int = Field(
        default=500,
        ge=50,
        le=1000,
        description="Highest DC voltage the stage delivers (CHAdeMO 0x108 available output and "
        "threshold voltage; GB/T CML maximum output voltage).",
    )
    min_output_voltage_v: int = Field(
        default=150,
        ge=0,
        le=1000,
        description="Lowest DC voltage the stage works at (GB/T CML minimum output voltage; "
        "CHAdeMO 0x208 available input and lower threshold voltage).",
    )
    max_output_current_a: int = Field(
        default=125,
        ge=1,
        le=400,
        description="Highest charging current (CHAdeMO 0x108 byte 3, at most 255; GB/T CML).",
    )
    min_output_current_a: int = Field(
        default=0, ge=0, le=400, description="GB/T CML minimum output current."
    )
    discharge_offered: bool = Field(
        default=False,
        description="Offer discharge to the vehicle (CHAdeMO 0x109 byte 4 bit 0 with "
        "0x208/0x209; GB/T: honour a discharge current demand). Only where the power stage "
        "and the site are approved for export.",
    )
    max_discharge_current_a: int = Field(
        default=0,
        ge=0,
        le=400,
        description="Highest discharge current (CHAdeMO 0x208 byte 3, at most 255).",
    )
    insulation_test_s: float = Field(
        default=1.0,
        gt=0,
        le=15,
        description="Insulation test: how long the insulation monitor must report OK without a "
        "break, counted from the test's start, before it passes (at least the IMD's response "
        "time).",
    )
    insulation_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=15,
        description="Insulation test: without the monitor's OK held for insulation_test_s "
        "within this long, the session fails with the reason (CHAdeMO needs d2 within 20 s of "
        "d1, so the test must end well before).",
    )
    pause_limit_s: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="GB/T: a vehicle that keeps charging 'forbidden' (BSM) longer than this "
        "ends the session (CST, conditions reached). The standard sets no limit.",
    )
    charger_number: int = Field(
        default=1, ge=0, le=0xFFFFFFFF, description="GB/T CRM and CSD charger number."
    )
    region_code: str = Field(
        default="000",
        pattern=r"^[ -~]{3}$",
        description="GB/T CRM region code: three ASCII characters.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min_output_voltage_v >= self.max_output_voltage_v:
            raise ValueError(
                f"expected min_output_voltage_v below max_output_voltage_v, found "
                f"{self.min_output_voltage_v} and {self.max_output_voltage_v}"
            )
        if self.min_output_current_a > self.max_output_current_a:
            raise ValueError(
                f"expected min_output_current_a at or below max_output_current_a, found "
                f"{self.min_output_current_a} and {self.max_output_current_a}"
            )
        if self.insulation_test_s >= self.insulation_timeout_s:
            raise ValueError(
                f"expected insulation_test_s below insulation_timeout_s, found "
                f"{self.insulation_test_s:g} and {self.insulation_timeout_s:g}"
            )
        if self.discharge_offered and self.max_discharge_current_a == 0:
            raise ValueError(
                "discharge_offered is true: expected max_discharge_current_a above 0, found 0"
            )
        return self


class VehicleConfig(Section):
    """The vehicle link."""

    protocol: Literal["chademo", "gbt27930", "dbc"] = Field(
        description="Charging protocol the vehicle speaks; dbc: a generic BMS described by a "
        "profile (stationary packs, fleet vehicles)."
    )
    can: CanConfig = CanConfig()
    stale_after_s: float = Field(
        default=1.0,
        gt=0,
        le=5.0,
        description="Vehicle data older than this stops energy transfer "
        "(CHAdeMO 0x102 / GB/T BCL timeout is 1 s).",
    )
    lines: LinesConfig | None = Field(
        default=None,
        description="The charger board's lines. Without them no CHAdeMO or GB/T session can "
        "start (nothing reads as plugged in); a generic BMS (dbc) needs none.",
    )
    charger: ChargerRatingsConfig = ChargerRatingsConfig()
    dbc_dir: str | None = Field(
        default=None,
        min_length=1,
        description="Directory holding chademo.dbc and gbt27930.dbc; empty means the source "
        "tree's dbc/, else /usr/share/v2g-controller/dbc.",
    )
    profile: str | None = Field(
        default=None,
        min_length=1,
        description="protocol dbc: the BMS profile YAML (see config/bms/); relative to the "
        "working directory.",
    )

    @model_validator(mode="after")
    def _protocol_fits(self) -> Self:
        if self.protocol == "dbc":
            if self.profile is None:
                raise ValueError("protocol is 'dbc': expected profile (a BMS profile), found none")
            if self.can.bitrate_bps is None:
                raise ValueError(
                    "protocol is 'dbc': expected can.bitrate_bps (the BMS bus speed), found none"
                )
            return self
        if self.profile is not None:
            raise ValueError(
                f"protocol is {self.protocol!r}: expected no profile, found {self.profile!r} "
                "(set protocol: dbc to use it)"
            )
        if self.protocol == "chademo":
            # CHAdeMO 0x108 byte 3 and 0x208 byte 3 are single bytes, 1 A/bit.
            for name in ("max_output_current_a", "max_discharge_current_a"):
                value = getattr(self.charger, name)
                if value > 255:
                    raise ValueError(
                        f"protocol is 'chademo': expected charger.{name} at most 255 "
                        f"(one byte in 0x108/0x208), found {value}"
                    )
        if self.lines is not None and self.lines.offsets is not None:
            missing = [
                name
                for name in REQUIRED_LINES[self.protocol]
                if name not in self.lines.offsets.wired()
            ]
            if missing:
                raise ValueError(
                    f"protocol is {self.protocol!r}: expected lines.offsets for "
                    f"{', '.join(REQUIRED_LINES[self.protocol])}, found none for "
                    f"{', '.join(missing)}"
                )
        return self

    @property
    def bitrate_bps(self) -> int:
        if self.can.bitrate_bps is not None:
            return self.can.bitrate_bps
        return DEFAULT_BITRATE_BPS[self.protocol]


# --- inverter (Modbus) ------------------------------------------------------------------------


class ModbusTcpConfig(Section):
    host: str = Field(min_length=1, description="Inverter IP address or host name.")
    port: int = Field(default=502, ge=1, le=65535)


class ModbusRtuConfig(Section):
    device: str = Field(min_length=1, description="Serial device, e.g. /dev/ttyUSB0.")
    baudrate: int = Field(default=9600, ge=1200, le=921_600)
    parity: Literal["N", "E", "O"] = "N"
    stop_bits: Literal[1, 2] = 1
    byte_size: Literal[7, 8] = 8


class InverterConfig(Section):
    """The bidirectional inverter."""

    transport: Literal["tcp", "rtu"] = Field(description="Modbus TCP or Modbus RTU (RS-485).")
    tcp: ModbusTcpConfig | None = None
    rtu: ModbusRtuConfig | None = None
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id.")
    profile: Literal["sunspec", "register_map"] = Field(
        default="sunspec", description="SunSpec discovery, or a vendor register map file."
    )
    register_map: str | None = Field(
        default=None, description="Register map YAML (profile: register_map)."
    )
    timeout_s: float = Field(default=1.0, gt=0, le=10.0, description="Per-request timeout.")
    retries: int = Field(default=2, ge=0, le=5, description="Retries per request.")
    poll_interval_s: float = Field(default=0.5, ge=0.05, le=10.0)
    revert_timeout_s: float = Field(
        default=3.0,
        ge=2.0,
        le=600.0,
        description="Inverter's own revert timer (SunSpec WSetRvrtTms): a silent controller "
        "leaves the inverter at 0 W after this long; the setpoint is re-sent every third of "
        "it. Short, since a car that stopped is not protected by it (docs/inverter.md); longer "
        "only for a device too slow to be written every third of it.",
    )

    @model_validator(mode="after")
    def _transport_section_present(self) -> Self:
        chosen = self.tcp if self.transport == "tcp" else self.rtu
        other = "rtu" if self.transport == "tcp" else "tcp"
        if chosen is None:
            raise ValueError(
                f"transport is {self.transport!r}: expected a '{self.transport}:' section, "
                "found none"
            )
        if getattr(self, other) is not None:
            raise ValueError(
                f"transport is {self.transport!r}: expected no '{other}:' section, found one"
            )
        if self.profile == "register_map" and not self.register_map:
            raise ValueError(
                "profile is 'register_map': expected register_map to name a map file, found none"
            )
        if self.profile == "sunspec" and self.register_map:
            raise ValueError(
                "profile is 'sunspec': expected no register_map, found "
                f"{self.register_map!r} (set profile: register_map to use it)"
            )
        return self


# --- aggregator (MQTT) ------------------------------------------------------------------------


class BrokerAddress(Section):
    """Another address of the same broker service: a node of its cluster, or a standby."""

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535, description="Default: broker.port.")


class MqttBrokerConfig(Section):
    host: str = Field(min_length=1)
    port: int = Field(default=8883, ge=1, le=65535)
    failover: list[BrokerAddress] = Field(
        default_factory=list,
        max_length=16,
        description="Further addresses of the same broker (the other nodes of a cluster, or a "
        "standby), tried in turn after host:port when a connection fails or is lost. They share "
        "the TLS settings, login and client id.",
    )
    keepalive_s: int = Field(default=30, ge=5, le=600)
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT version; 3.1.1 for older brokers."
    )
    client_id: str | None = Field(
        default=None, description="Defaults to v2g-{site_id}-{charger_id}."
    )


class MqttTlsConfig(Section):
    ca_file: str = Field(min_length=1, description="CA certificate that signed the broker's.")
    cert_file: str | None = Field(default=None, description="Client certificate (mutual TLS).")
    key_file: str | None = Field(default=None, description="Client private key (mutual TLS).")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("expected cert_file and key_file together, found only one of them")
        return self


class AggregatorConfig(Section):
    """The aggregator's MQTT broker."""

    enabled: bool = Field(default=True, description="false: run on the local policy only.")
    broker: MqttBrokerConfig | None = None
    tls: MqttTlsConfig | None = Field(default=None, description="Omit only on a trusted LAN.")
    username: str | None = None
    password_file: str | None = Field(
        default=None, description="File holding the MQTT password (kept out of this config)."
    )
    topic_prefix: str = Field(
        default="v2g/{site_id}/{charger_id}",
        description="Topics live under this; {site_id} and {charger_id} are filled in.",
    )
    max_setpoint_ttl_s: float = Field(
        default=900.0,
        gt=0,
        le=86_400,
        description="A setpoint valid for longer than this is rejected.",
    )
    telemetry_period_s: float = Field(default=10.0, ge=1.0, le=3600.0)
    telemetry_min_interval_s: float = Field(
        default=1.0,
        ge=0.1,
        le=3600.0,
        description="At most one telemetry record per this interval, changes included: a change "
        "inside it goes out when it ends, never lost. A change is a value moving past its "
        "deadband (100 W, 0.5 % SoC, 5 V, a limit's power by 100 W), a limit coming or going, or "
        "a state, source, setpoint or fault change; never a limit's text. At most "
        "telemetry_period_s.",
    )
    telemetry_idle_period_s: float = Field(
        default=300.0,
        ge=1.0,
        le=86_400,
        description="The periodic telemetry while the charger is idle (state idle, 0 W) and "
        "nothing changes, instead of telemetry_period_s; a change still goes out at once. Why: an "
        "idle plugged car on a cellular uplink should cost at most 1 MB a day, and a record of "
        "about 1 KB (8 limits in force) every 10 s is over 8 MB a day, every 300 s under "
        "0.3 MB. Meanwhile the "
        "MQTT keepalive and the Last Will tell when the charger is gone. Below "
        "telemetry_period_s, telemetry_period_s applies (a config written before this key "
        "existed, with a longer period, loads unchanged).",
    )
    max_abs_power_w: float = Field(
        default=22_000.0,
        gt=0,
        le=400_000,
        description="A setpoint asking for more than this, charging or discharging, is rejected "
        "as out of range. Within it, the safety limits cap the power and the ack names the limit.",
    )
    clock_skew_tolerance_s: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="A setpoint issued up to this far in the future (by this charger's clock) "
        "is still accepted; later than that it is rejected as future-dated.",
    )
    reconnect_initial_s: float = Field(
        default=1.0, ge=0.1, le=60, description="First wait before reconnecting to the broker."
    )
    reconnect_max_s: float = Field(
        default=60.0,
        ge=0.1,
        le=3600,
        description="The wait doubles on each failed attempt up to this (with random jitter).",
    )
    reconnect_spread_s: float = Field(
        default=45.0,
        ge=0,
        le=3600,
        description="After a connection that was up is lost, the first reconnect waits a random "
        "time up to this: when a broker restarts, its whole fleet loses the connection at once, "
        "and this spreads the reconnects out (45 s keeps every one-second window under 5 % of "
        "a fleet of 1000: docs/performance.md). It also applies when only this charger's link "
        "dropped (a cellular blip): up to this long without the aggregator, on the fallback "
        "policy. 0: reconnect at once.",
    )
    outbox_max_records: int = Field(
        default=100_000,
        ge=1000,
        le=10_000_000,
        description="Telemetry, events and session records kept in the ledger file while the "
        "broker is unreachable. Over this, the oldest telemetry is dropped first, then events; "
        "session records only when nothing else is left. 100000 holds a week at 10 s telemetry.",
    )
    outbox_max_age_s: float = Field(
        default=604_800.0,
        ge=3600,
        le=90 * 86_400,
        description="Stored telemetry and events older than this are dropped (session records "
        "are never dropped for age). Default: 7 days.",
    )

    @model_validator(mode="after")
    def _broker_when_enabled(self) -> Self:
        if self.enabled and self.broker is None:
            raise ValueError("enabled is true: expected a 'broker:' section, found none")
        if "#" in self.topic_prefix or "+" in self.topic_prefix:
            raise ValueError(
                f"topic_prefix: expected no MQTT wildcards, found {self.topic_prefix!r}"
            )
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file is set: expected a username with it, found none")
        if self.reconnect_initial_s > self.reconnect_max_s:
            raise ValueError(
                "expected reconnect_initial_s at or below reconnect_max_s, found "
                f"{self.reconnect_initial_s:g} and {self.reconnect_max_s:g}"
            )
        if self.telemetry_min_interval_s > self.telemetry_period_s:
            raise ValueError(
                "expected telemetry_min_interval_s at or below telemetry_period_s, found "
                f"{self.telemetry_min_interval_s:g} and {self.telemetry_period_s:g}"
            )
        return self


# --- owner policy and safety ------------------------------------------------------------------


class DepartureConfig(Section):
    """When the owner leaves and how full the car must be."""

    time: dt.time = Field(description="Local time of departure, e.g. '07:30'.")
    target_soc_pct: float = Field(ge=0, le=100, description="SoC the car must have by then.")


class OwnerConfig(Section):
    """The owner's promises: what the car keeps, and what it has at departure."""

    soc_floor_pct: float = Field(
        default=40.0,
        ge=0,
        le=100,
        description="Never discharge at or below this SoC.",
    )
    soc_ceiling_pct: float = Field(
        default=90.0, ge=0, le=100, description="Never charge above this SoC."
    )
    departure: DepartureConfig | None = None
    battery_capacity_kwh: float = Field(
        default=80.0,
        ge=5,
        le=250,
        description="Used when the car does not report its capacity, or reports one outside "
        "5..250 kWh; too large is the safe side for the departure reserve.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.soc_floor_pct >= self.soc_ceiling_pct:
            raise ValueError(
                f"expected soc_floor_pct below soc_ceiling_pct, found floor "
                f"{self.soc_floor_pct:g} and ceiling {self.soc_ceiling_pct:g}"
            )
        if self.departure is not None and self.departure.target_soc_pct > self.soc_ceiling_pct:
            raise ValueError(
                f"expected departure.target_soc_pct at or below soc_ceiling_pct "
                f"({self.soc_ceiling_pct:g}), found {self.departure.target_soc_pct:g}"
            )
        return self


class SafetyConfig(Section):
    """Limits the charger never exceeds, whatever the aggregator asks."""

    max_charge_power_w: float = Field(default=7400.0, gt=0, le=400_000)
    max_discharge_power_w: float = Field(default=7400.0, gt=0, le=400_000)
    grid_import_limit_w: float = Field(
        default=11_000.0, gt=0, le=1_000_000, description="Site connection, import."
    )
    grid_export_limit_w: float = Field(
        default=7400.0, ge=0, le=1_000_000, description="Site connection, export (0 = none)."
    )
    ramp_w_per_s: float = Field(
        default=2000.0, gt=0, le=1_000_000, description="Maximum rate of change away from 0 W."
    )
    floor_hysteresis_pct: float = Field(
        default=2.0, ge=0, le=20, description="Discharge resumes only this far above the floor."
    )
    ceiling_hysteresis_pct: float = Field(
        default=2.0, ge=0, le=20, description="Charging resumes only this far below the ceiling."
    )
    departure_margin_pct: float = Field(
        default=20.0,
        ge=0,
        le=200,
        description="Extra time kept in hand for the departure charge, in % of the time needed.",
    )
    battery_temp_derate_c: float = Field(default=45.0, ge=-40, le=80)
    battery_temp_cutoff_c: float = Field(default=55.0, ge=-40, le=90)
    battery_temp_min_c: float = Field(default=-10.0, ge=-40, le=40)
    inverter_temp_derate_c: float = Field(default=70.0, ge=-40, le=120)
    inverter_temp_cutoff_c: float = Field(default=85.0, ge=-40, le=130)
    inverter_stale_after_s: float = Field(default=3.0, gt=0, le=30)
    cell_voltage_max_v: float = Field(
        default=4.20, gt=1.0, le=5.0, description="No charging at or above (NMC; LFP: 3.65)."
    )
    cell_voltage_min_v: float = Field(
        default=3.00, gt=1.0, le=5.0, description="No discharging at or below (NMC; LFP: 2.50)."
    )
    fault_reset: Literal["auto", "manual"] = Field(
        default="auto",
        description="auto: clear a latched fault after fault_hold_s. An emergency stop is never "
        "reset automatically, whatever this says.",
    )
    fault_hold_s: float = Field(default=60.0, ge=0, le=86_400)
    manual_reset: list[Literal["vehicle_fault", "inverter_fault"]] = Field(
        default_factory=list,
        description="Fault kinds only a person may reset (SIGUSR1, `v2g-controller "
        "reset-faults`, or the fault_reset line), even with fault_reset auto.",
    )
    soc_resolution_pct: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="How far the car's reported SoC may be from the true one (CHAdeMO and GB/T "
        "report whole percent); the floor and ceiling keep this much in hand.",
    )
    floor_horizon_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How long energy keeps flowing after a decision (data age, the next cycle, "
        "the inverter's response); the floor and ceiling keep that energy in hand.",
    )
    max_discharge_kwh_per_day: float = Field(default=20.0, ge=0, le=1000)
    max_cycles_per_day: float | None = Field(default=None, gt=0, le=10)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.battery_temp_derate_c >= self.battery_temp_cutoff_c:
            raise ValueError(
                "expected battery_temp_derate_c below battery_temp_cutoff_c, found "
                f"{self.battery_temp_derate_c:g} and {self.battery_temp_cutoff_c:g}"
            )
        if self.inverter_temp_derate_c >= self.inverter_temp_cutoff_c:
            raise ValueError(
                "expected inverter_temp_derate_c below inverter_temp_cutoff_c, found "
                f"{self.inverter_temp_derate_c:g} and {self.inverter_temp_cutoff_c:g}"
            )
        if self.cell_voltage_min_v >= self.cell_voltage_max_v:
            raise ValueError(
                "expected cell_voltage_min_v below cell_voltage_max_v, found "
                f"{self.cell_voltage_min_v:g} and {self.cell_voltage_max_v:g}"
            )
        return self


class TimeWindow(Section):
    """A daily local-time window; it may cross midnight (start after end)."""

    start: dt.time
    end: dt.time

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:
            raise ValueError(f"expected start and end to differ, found both {self.start}")
        return self


class FallbackConfig(Section):
    """What the charger does on its own when no valid aggregator setpoint is in force."""

    policy: Literal["idle", "time_of_use", "optimize"] = Field(
        default="idle",
        description="idle: hold 0 W. time_of_use: charge in cheap_window, discharge in "
        "peak_window. optimize: plan charging and discharging against the tariff (`tariff:`), "
        "battery wear (`economics:`) and the departure promise, re-planned on every change; the "
        "default in the examples (docs/economics.md).",
    )
    cheap_window: TimeWindow | None = Field(
        default=None,
        description="policy time_of_use only: charge toward the departure target in this window.",
    )
    peak_window: TimeWindow | None = Field(
        default=None,
        description="policy time_of_use only: discharge above the floor in this window.",
    )
    charge_power_w: float = Field(default=3700.0, ge=0, le=400_000)
    discharge_power_w: float = Field(default=3700.0, ge=0, le=400_000)

    @model_validator(mode="after")
    def _windows_for_tou(self) -> Self:
        if self.policy == "time_of_use" and self.cheap_window is None and self.peak_window is None:
            raise ValueError(
                "policy is 'time_of_use': expected cheap_window or peak_window, found neither"
            )
        return self


class TariffConfig(Section):
    """The older flat tariff, one price each way: used only without a top-level `tariff:`.

    It is then the tariff all day, every day; giving both is an error.
    """

    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    import_price_per_kwh: float = Field(default=0.25, ge=-10, le=10)
    export_price_per_kwh: float = Field(default=0.30, ge=-10, le=10)


# --- tariff and economics ---------------------------------------------------------------------

_DAY_TYPES = Literal["weekday", "weekend", "holiday"]


class TariffBandConfig(Section):
    """One band of a period: prices from start to end, local time."""

    start: dt.time = Field(description="Local time the band begins, e.g. '07:00' (quote it).")
    end: dt.time = Field(
        description="Local time it ends; '00:00' is midnight. A band may cross midnight "
        "('23:00' to '07:00'); '00:00' to '00:00' is the whole day."
    )
    import_per_kwh: float = Field(
        description="What the owner pays per kWh taken from the grid, in the tariff's currency "
        "(all taxes and network charges included: what the bill says)."
    )
    export_per_kwh: float = Field(
        description="What the owner is paid per kWh sent to the grid (feed-in or V2G price)."
    )
    name: str = Field(
        default="", max_length=40, description="e.g. peak, valley, flat: shown in receipts."
    )


def _all_months() -> list[int]:
    return list(range(1, 13))


def _all_day_types() -> list[_DAY_TYPES]:
    return ["weekday", "weekend", "holiday"]


class TariffPeriodConfig(Section):
    """The bands that apply on some day types in some months (a season)."""

    months: list[int] = Field(
        default_factory=_all_months,
        min_length=1,
        description="Months 1-12 this period applies in (a season); default: all.",
    )
    day_types: list[_DAY_TYPES] = Field(
        default_factory=_all_day_types,
        min_length=1,
        description="weekday (Mon-Fri), weekend (Sat, Sun), holiday (the dates in "
        "tariff.holidays, whatever day of the week); default: all.",
    )
    bands: list[TariffBandConfig] = Field(
        min_length=1,
        description="Bands that cover the 24 hours exactly once, without gaps or overlaps.",
    )

    @field_validator("months")
    @classmethod
    def _calendar_months(cls, months: list[int]) -> list[int]:
        wrong = [month for month in months if not 1 <= month <= 12]
        if wrong:
            raise ValueError(f"expected months 1-12, found {', '.join(map(str, wrong))}")
        return months


class PeakEventConfig(Section):
    """A demand-response event known in advance: a bonus on the export price while it runs."""

    id: str = Field(pattern=_IDENT, description="Names the event in receipts.")
    start: dt.datetime = Field(
        description="When it starts, with the UTC offset: 2026-07-15T19:00:00+08:00."
    )
    end: dt.datetime = Field(description="When it ends, with the UTC offset.")
    bonus_per_kwh: float = Field(
        ge=-100,
        le=100,
        allow_inf_nan=False,
        description="Added to the export price for energy exported during the event.",
    )
    power_w: float | None = Field(
        default=None,
        gt=0,
        le=400_000,
        allow_inf_nan=False,
        description="The bonus is paid for export up to this power; empty: all export.",
    )

    @field_validator("start", "end")
    @classmethod
    def _with_offset(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                "expected a date and time with its UTC offset, e.g. 2026-07-15T19:00:00+08:00, "
                f"found {value.isoformat()} without one"
            )
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end <= self.start:
            raise ValueError(
                f"expected end after start, found start {self.start.isoformat()} and end "
                f"{self.end.isoformat()}"
            )
        return self

    def event(self) -> PeakEvent:
        return PeakEvent(self.id, self.start, self.end, self.bonus_per_kwh, self.power_w)


class SiteTariffConfig(Section):
    """Import and export prices per time band, by season and day type, in site.timezone.

    docs/economics.md, "Tariffs and prices", shows how to write one.
    """

    currency: str = Field(
        pattern=r"^[A-Z]{3}$", description="ISO 4217 code of every price: EUR, CNY, GBP..."
    )
    periods: list[TariffPeriodConfig] = Field(
        min_length=1,
        description="Each month and day type must be covered by exactly one period.",
    )
    holidays: list[dt.date] = Field(
        default_factory=list,
        description="Dates priced as day type holiday, e.g. 2026-10-01 (public holidays).",
    )
    events: list[PeakEventConfig] = Field(
        default_factory=list,
        description="Peak events known in advance (the aggregator can also push them).",
    )

    def problems(self) -> list[tuple[Loc, str]]:
        """Gaps, overlaps and coverage problems, each at its key (relative to this section)."""
        return list(_tariff_problems(self.currency, self._periods()))

    def build(self) -> Tariff:
        """The economics room's tariff (call only on a config without problems())."""
        return Tariff(self.currency, self._periods(), frozenset(self.holidays))

    def peak_events(self) -> tuple[PeakEvent, ...]:
        return tuple(event.event() for event in self.events)

    def _periods(self) -> tuple[TariffPeriod, ...]:
        return tuple(
            TariffPeriod(
                frozenset(period.months),
                frozenset(DayType(kind) for kind in period.day_types),
                tuple(
                    Band(b.start, b.end, b.import_per_kwh, b.export_per_kwh, b.name)
                    for b in period.bands
                ),
            )
            for period in self.periods
        )


class EconomicsConfig(Section):
    """What the optimize policy weighs against the tariff: the battery's wear and the losses."""

    battery_chemistry: Literal["nmc", "lfp"] = Field(
        default="nmc",
        description="Cell chemistry of the car's battery: it sets the wear model's parameters "
        "(docs/economics.md). Most European cars are NMC; many Chinese ones LFP.",
    )
    battery_replacement_cost: float = Field(
        default=8000.0,
        gt=0,
        le=1_000_000,
        allow_inf_nan=False,
        description="What a new battery for this car costs, in the tariff's currency. Set it "
        "per site: the default (8000) is a placeholder, and wear cost scales with it.",
    )
    charge_efficiency_pct: float = Field(
        default=92.0,
        ge=50,
        le=100,
        description="Energy stored in the battery per energy taken from the grid, in %.",
    )
    discharge_efficiency_pct: float = Field(
        default=92.0,
        ge=50,
        le=100,
        description="Energy delivered to the grid per energy taken from the battery, in %.",
    )
    plan_slots_published: int = Field(
        default=16,
        ge=0,
        le=192,
        description="How many of the next 15-minute slots of the plan the telemetry carries.",
    )
    replan_soc_deviation_pct: float = Field(
        default=2.0,
        gt=0,
        le=50,
        description="Re-plan when the car's SoC is this far from the plan's SoC for now.",
    )


class LedgerConfig(Section):
    path: str = Field(
        default="/var/lib/v2g-controller/ledger.sqlite",
        min_length=1,
        description="SQLite energy ledger (under the service's StateDirectory).",
    )
    tariff: TariffConfig = TariffConfig()
    commit_interval_s: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="Longest time between ledger commits (fewer writes spare the SD card). "
        "Energy from inverter counters is never lost by a crash; energy integrated from measured "
        "power, where the inverter has no counter, can lose up to this much (or 20 Wh).",
    )


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: JSON lines under systemd, readable console on a TTY."
    )


# AF_UNIX sun_path holds 108 bytes on Linux, the terminating NUL among them (unix(7)).
_UNIX_PATH_MAX_BYTES = 107


class StatusConfig(Section):
    """The local channel of `v2g-controller status` and `reset`: a Unix socket, never network.

    Mode 0660: the service's user and group may read the status and ask for a fault reset.
    """

    enabled: bool = Field(default=True, description="false: no status socket is opened.")
    socket_path: str | None = Field(
        default=None,
        min_length=1,
        description="The socket. Default: status.sock in the service's RuntimeDirectory "
        "($RUNTIME_DIRECTORY, else /run/v2g-controller/status.sock).",
    )

    @field_validator("socket_path")
    @classmethod
    def _usable_socket_path(cls, path: str | None) -> str | None:
        if path is None:
            return None
        if not path.startswith("/"):
            raise ValueError(f"expected an absolute path, found {path!r}")
        size = len(path.encode())
        if size > _UNIX_PATH_MAX_BYTES:
            raise ValueError(
                f"expected at most {_UNIX_PATH_MAX_BYTES} bytes (a Unix socket's path limit), "
                f"found {size}"
            )
        return path


class ControlConfig(Section):
    tick_s: float = Field(
        default=0.1, ge=0.01, le=1.0, description="Control loop period (it also wakes on events)."
    )
    shutdown_timeout_s: float = Field(
        default=4.0,
        ge=0.5,
        le=4.5,
        description="Budget for the clean stop sequence (the process exits within 5 s).",
    )
    state_path: str | None = Field(
        default=None,
        min_length=1,
        description="Latched faults, the departure of the plugged-in session and the wear count, "
        "written on a thread of their own as soon as they change, so a restart never forgets "
        "them and a slow card never delays a command. Empty: core-state.json beside ledger.path.",
    )

    def state_file(self, ledger_path: str) -> str:
        """Where the core's durable state lives."""
        if self.state_path is not None:
            return self.state_path
        return str(Path(ledger_path).with_name("core-state.json"))


class Config(Section):
    """The whole controller config (one YAML file)."""

    site: SiteConfig
    vehicle: VehicleConfig
    inverter: InverterConfig
    aggregator: AggregatorConfig
    owner: OwnerConfig = OwnerConfig()
    safety: SafetyConfig = SafetyConfig()
    fallback: FallbackConfig = FallbackConfig()
    tariff: SiteTariffConfig | None = Field(
        default=None,
        description="Prices by band, day type and season. Empty: the flat ledger.tariff.",
    )
    economics: EconomicsConfig = EconomicsConfig()
    ledger: LedgerConfig = LedgerConfig()
    logging: LoggingConfig = LoggingConfig()
    control: ControlConfig = ControlConfig()
    status: StatusConfig = StatusConfig()

    @property
    def topic_prefix(self) -> str:
        return self.aggregator.topic_prefix.format(
            site_id=self.site.site_id, charger_id=self.site.charger_id
        )

    def economic_tariff(self) -> Tariff:
        """The tariff the economics use: the top-level ``tariff:``, else the flat
        ``ledger.tariff`` all day, every day."""
        if self.tariff is not None:
            return self.tariff.build()
        flat = self.ledger.tariff
        return Tariff.flat(flat.currency, flat.import_price_per_kwh, flat.export_price_per_kwh)

    def peak_events(self) -> tuple[PeakEvent, ...]:
        """The peak events written in the config (none without a top-level ``tariff:``)."""
        return () if self.tariff is None else self.tariff.peak_events()

    def cross_problems(self) -> list[tuple[Loc, str]]:
        """Checks across keys, each at the key it concerns (run by the loader after the schema)."""
        if self.tariff is None:
            return []
        found = [(("tariff", *where), message) for where, message in self.tariff.problems()]
        if "tariff" in self.ledger.model_fields_set:
            found.append(
                (
                    ("ledger", "tariff"),
                    "found both the top-level 'tariff:' and 'ledger.tariff:'; expected one: keep "
                    "'tariff:' and delete 'ledger.tariff:' (the older flat tariff)",
                )
            )
        return found


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config, for editors that validate YAML as it is typed."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "v2g-controller configuration"
    return schema


# --- loading ----------------------------------------------------------------------------------


def parse_config(text: str, file: str = "<config>") -> Config:
    """Validate YAML text into a Config, or raise ConfigError with every problem found."""
    return validate_text(Config, text, file)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file (and the register map it names), or raise ConfigError
    with every problem found. A relative register map path is taken from the config's folder.
    """
    config_path = Path(path)
    config = load_file(Config, config_path)
    map_name = config.inverter.register_map
    if config.inverter.profile == "register_map" and map_name:
        map_path = Path(map_name)
        if not map_path.is_absolute():
            map_path = config_path.parent / map_path
        try:
            load_register_map(map_path)
        except ConfigError as error:
            raise ConfigError(
                [
                    ConfigProblem(
                        p.file,
                        p.line,
                        p.path,
                        f"{p.message} (register map named by inverter.register_map)",
                    )
                    for p in error.problems
                ]
            ) from None
        inverter = config.inverter.model_copy(update={"register_map": str(map_path)})
        config = config.model_copy(update={"inverter": inverter})
    return config
