"""The schema of a vendor register map (``config/inverters/*.yaml``, ``inverter.profile:
register_map``): a non-SunSpec inverter's registers and the role each plays (docs/inverter.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator

from controller.config.loader import Loc, Section, load_file


class MapRegister(Section):
    """One register (or register pair) of a vendor map."""

    address: int = Field(ge=0, le=65535, description="Protocol (0-based) register address.")
    function: Literal["holding", "input"] = Field(
        default="holding", description="holding: read with function 3; input: function 4."
    )
    type: Literal["u16", "i16", "u32", "i32", "f32"]
    word_order: Literal["high_first", "low_first"] | None = Field(
        default=None, description="Overrides the map's word_order for this register."
    )
    scale: float = Field(default=1.0, description="Engineering value = raw x scale.")
    unit: str | None = None
    access: Literal["r", "rw"] = "r"

    @model_validator(mode="after")
    def _sane(self) -> Self:
        if self.scale == 0:
            raise ValueError("expected a non-zero scale, found 0")
        if self.access == "rw" and self.function == "input":
            raise ValueError("expected input registers to be read-only (access: r), found rw")
        return self

    @property
    def words(self) -> int:
        return 1 if self.type in ("u16", "i16") else 2


class SignedRole(Section):
    register_name: str = Field(alias="register")
    sign: Literal["import_positive", "export_positive"] = Field(
        description="import_positive: + charges the vehicle; export_positive: + discharges it."
    )


class EnableRole(Section):
    register_name: str = Field(alias="register")
    on: int = 1
    off: int = 0


class HeartbeatRole(Section):
    register_name: str = Field(alias="register")
    kind: Literal["timeout", "counter"] = Field(
        description="timeout: the register holds the revert time in seconds, written at setup; "
        "counter: a value the controller changes with every command."
    )
    timeout_s: float | None = Field(
        default=None, gt=0, le=3600, description="For kind counter: the device's own timeout."
    )


class StatusRole(Section):
    register_name: str = Field(alias="register")
    names: dict[int, str] = Field(default_factory=dict, description="Value -> state name.")
    fault_values: list[int] = Field(default_factory=list, description="Values that mean fault.")


class FaultRole(Section):
    register_name: str = Field(alias="register")
    names: dict[int, str] = Field(default_factory=dict, description="Code -> fault name.")


class MapRoles(Section):
    """Which registers the controller uses for what."""

    setpoint: SignedRole
    measured_power: SignedRole
    enable: EnableRole | None = None
    heartbeat: HeartbeatRole
    status: StatusRole | None = None
    fault: FaultRole | None = None
    energy_charged: str | None = None
    energy_discharged: str | None = None
    temperature: str | None = None
    dc_voltage: str | None = None
    max_charge_power: str | None = None
    max_discharge_power: str | None = None


class RegisterMap(Section):
    """A non-SunSpec inverter's register map (one file per model in config/inverters/)."""

    manufacturer: str = Field(min_length=1)
    model: str = Field(min_length=1)
    word_order: Literal["high_first", "low_first"] = "high_first"
    registers: dict[str, MapRegister] = Field(min_length=1)
    roles: MapRoles

    def cross_problems(self) -> list[tuple[Loc, str]]:
        """Problems between roles and registers, each at the role that has it."""
        problems: list[tuple[Loc, str]] = []
        roles = self.roles
        named: dict[str, str | None] = {
            "setpoint": roles.setpoint.register_name,
            "measured_power": roles.measured_power.register_name,
            "enable": roles.enable.register_name if roles.enable else None,
            "heartbeat": roles.heartbeat.register_name,
            "status": roles.status.register_name if roles.status else None,
            "fault": roles.fault.register_name if roles.fault else None,
            "energy_charged": roles.energy_charged,
            "energy_discharged": roles.energy_discharged,
            "temperature": roles.temperature,
            "dc_voltage": roles.dc_voltage,
            "max_charge_power": roles.max_charge_power,
            "max_discharge_power": roles.max_discharge_power,
        }
        for role, register in named.items():
            if register is not None and register not in self.registers:
                problems.append(
                    (("roles", role), f"names register {register!r}, which is not defined")
                )
        for role in ("setpoint", "enable", "heartbeat"):
            register = named[role]
            if register in self.registers and self.registers[register].access != "rw":
                problems.append(
                    (("roles", role), f"expected register {register!r} to be rw, found r")
                )
        if roles.heartbeat.kind == "counter" and roles.heartbeat.timeout_s is None:
            problems.append(
                (("roles", "heartbeat"), "kind counter: expected timeout_s, found none")
            )
        return problems


def load_register_map(path: str | Path) -> RegisterMap:
    """Read and validate a vendor register map, or raise ConfigError with every problem."""
    return load_file(RegisterMap, path)
