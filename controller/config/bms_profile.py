"""The schema of a generic BMS profile (``config/bms/*.yaml``, ``vehicle.protocol: dbc``).

A profile maps the signals of a pack's DBC file to ``VehicleState`` values, flags and fault
reasons, with a staleness deadline per message (docs/vehicle.md). ``load_bms_profile`` reads one;
the vehicle link checks the names against the DBC and reports what it does not have at the
profile's lines with ``bms_profile_error``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, model_validator

from controller.config.loader import Loc, Section, error_at, load_file
from controller.errors import ConfigError


class BmsSignal(Section):
    """A DBC signal feeding a VehicleState value, with what it takes to read it right."""

    signal: str = Field(min_length=1, description="Signal name in the message.")
    negate: bool = Field(
        default=False,
        description="true when the BMS's sign is the controller's opposite (e.g. its pack "
        "current is + when discharging; the controller's + charges).",
    )
    min: float | None = Field(
        default=None, description="Plausible minimum; a value below it is a fault."
    )
    max: float | None = Field(
        default=None, description="Plausible maximum; a value above it is a fault."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"expected min below max, found {self.min:g} and {self.max:g}")
        return self


SignalRef = Annotated[
    str | BmsSignal, Field(description="A signal name, or {signal, negate, min, max}.")
]


class BmsValues(Section):
    """VehicleState values a message feeds (units as the names say; + current charges)."""

    soc_pct: SignalRef | None = None
    pack_voltage_v: SignalRef | None = None
    pack_current_a: SignalRef | None = None
    charge_current_limit_a: SignalRef | None = None
    charge_voltage_limit_v: SignalRef | None = None
    discharge_current_limit_a: SignalRef | None = None
    discharge_voltage_min_v: SignalRef | None = None
    discharge_soc_min_pct: SignalRef | None = None
    battery_temp_max_c: SignalRef | None = None
    battery_temp_min_c: SignalRef | None = None
    cell_voltage_max_v: SignalRef | None = None
    cell_voltage_min_v: SignalRef | None = None
    capacity_kwh: SignalRef | None = None

    def mapped(self) -> dict[str, BmsSignal]:
        """Field -> signal for every field given."""
        out: dict[str, BmsSignal] = {}
        for name in type(self).model_fields:
            ref = getattr(self, name)
            if isinstance(ref, str):
                out[name] = BmsSignal(signal=ref)
            elif ref is not None:
                out[name] = ref
        return out


class BmsFlags(Section):
    """VehicleState flags a message feeds: a non-zero signal value means true."""

    charge_permitted: str | None = Field(default=None, description="The BMS allows charging.")
    discharge_permitted: str | None = Field(default=None, description="The BMS allows discharging.")
    stop_requested: str | None = Field(default=None, description="The BMS asks for a stop.")

    def mapped(self) -> dict[str, str]:
        """Flag -> signal for every flag given."""
        return {name: signal for name, signal in self.model_dump().items() if signal is not None}


class BmsMessage(Section):
    """One DBC message the controller listens to."""

    deadline_s: float = Field(
        gt=0,
        le=60,
        description="Older than this, the message is stale and its absence is a fault.",
    )
    values: BmsValues = BmsValues()
    flags: BmsFlags = BmsFlags()
    faults: dict[str, str] = Field(
        default_factory=dict,
        description="Signal -> reason: a non-zero value is a fault with that reason.",
    )


class BmsProfile(Section):
    """How to read a generic BMS from its DBC file (``vehicle.protocol: dbc``)."""

    name: str | None = Field(
        default=None, description="What this pack is; shown as the vehicle's identity."
    )
    dbc_file: str = Field(min_length=1, description="The DBC file, relative to this profile.")
    capacity_kwh: float | None = Field(
        default=None,
        gt=0,
        le=10_000,
        description="Nameplate energy, for a BMS that does not send it.",
    )
    messages: dict[str, BmsMessage] = Field(
        min_length=1, description="DBC message name -> what it feeds."
    )

    def cross_problems(self) -> list[tuple[Loc, str]]:
        """Problems between messages, each at the key that has it."""
        problems: list[tuple[Loc, str]] = []
        fed_by: dict[str, str] = {}
        for message, spec in self.messages.items():
            for kind, names in (("values", spec.values.mapped()), ("flags", spec.flags.mapped())):
                for name in names:
                    if name in fed_by:
                        problems.append(
                            (
                                ("messages", message, kind, name),
                                f"expected each value fed by one message, found {name} in "
                                f"{fed_by[name]} and {message}",
                            )
                        )
                    fed_by.setdefault(name, message)
        if "soc_pct" not in fed_by:
            problems.append(
                (
                    ("messages",),
                    "expected a message feeding soc_pct (the core needs SoC), found none",
                )
            )
        if "capacity_kwh" in fed_by and self.capacity_kwh is not None:
            problems.append(
                (
                    ("capacity_kwh",),
                    f"expected capacity_kwh either here or from a signal, found both "
                    f"(signal in {fed_by['capacity_kwh']})",
                )
            )
        return problems


def load_bms_profile(path: str | Path) -> BmsProfile:
    """Read and validate a BMS profile, or raise ConfigError with every problem found."""
    return load_file(BmsProfile, path)


def bms_profile_error(path: str | Path, found: list[tuple[Loc, str]]) -> ConfigError:
    """A ConfigError for problems found in a valid profile by a later check (e.g. names that
    are not in its DBC file), each located at its line in the profile."""
    return error_at(path, found)
