"""What the simulated inverter's registers mean: SunSpec 700-series, 100-series, or a vendor map.

A profile owns the register image. ``refresh`` writes the power stage's live values into it
before a read is answered; ``apply_write`` interprets a write that has just landed.

Devices as they behave in the field, switched on per profile (``RevertMemory``):

- one that forgets its revert timer while the connection stays up (a firmware reset, a gateway):
  ``forget_revert_timer()`` at the next request, or ``forget_revert_after_s`` after every
  time it was armed; the timer register reads 0 and the stage never reverts. With
  ``forget_controls`` it loses its control mode and enable too (704 WSetMod, WSetEna and
  WSetEnaRvrt; 124 StorCtl_Mod; a map's enable register);
- one that will not keep it: ``refuse_revert_timer`` acknowledges a write of the timer, then
  holds 0.

The 100-series profile treats 124's InWRte / OutWRte as limits, as field devices do: the stage
runs at ``free_power_w`` (what the device would do by itself) clipped to the window
-OutWRte x WDisChaMax .. InWRte x WChaMax, WDisChaMax being its nameplate's MaxDisChaRte. A device
that ignores setpoint writes altogether is ``PowerStage.ignore_setpoints``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from controller.config import MapRegister, RegisterMap
from controller.inverter.codec import WordOrder, decode, encode
from controller.inverter.regmap import MAP_TYPES
from hil.inverter.stage import PowerStage
from hil.inverter.sunspec_image import SunSpecImage

SUNSPEC_BASE = 40000
MANUFACTURER = "V2G Labs"
SERIAL = "SIM-0001"

# Symbols from the SunSpec model definitions.
INVST_RUNNING, INVST_FAULT, INVST_STANDBY = 3, 6, 7
ST103_MPPT, ST103_FAULT, ST103_STANDBY = 4, 7, 8
ALRM_MANUFACTURER = 16  # 701 Alrm bit MANUFACTURER_ALRM
DC_MODEL = 714  # DER DC measurement
DC_PORT = "Prt[0].{}"  # its one port
PRTTYP_EV, DCSTA_ON = 2, 1  # 714 PrtTyp EV, DCSta ON
DCV_SF_714 = -1
DEFAULT_DC_VOLTAGE_V = 380.0  # as 103 DCV, until the plant sets the stage's DC voltage
EVT1_HW_TEST_FAILURE = 15  # 103 Evt1 bit used for an injected fault
STORCTL_CHARGE_BIT, STORCTL_DISCHARGE_BIT = 0, 1


class Profile(Protocol):
    name: str
    start_address: int

    @property
    def registers(self) -> list[int]: ...

    def bind(self, registers: list[int]) -> None:
        """Use the server's live register list from now on."""
        ...

    def refresh(self, stage: PowerStage, now_s: float) -> None: ...

    def apply_write(self, stage: PowerStage, address: int, count: int, now_s: float) -> None: ...

    def setpoint_span(self) -> tuple[int, int]:
        """(address, count) of the registers a stuck setpoint refuses to change."""
        ...


class RevertMemory(ABC):
    """How a device keeps its revert timer: forever (the default), or it forgets it (on demand,
    or a while after each arming), or it will not keep it at all. A profile says which
    registers hold the timer and the controls (``_forget_timer``, ``_forget_controls``,
    ``_spans_timer``, ``_refuse_timer``)."""

    def __init__(self) -> None:
        self.forget_revert_after_s: float | None = None
        self.forget_controls = False
        self.refuse_revert_timer = False
        self.forgets = 0
        self._forget_pending = False
        self._refused_pending = False  # a refused write of the timer: back to 0 at the next request
        self._armed_at_s: float | None = None
        # The span the request being answered writes: the server stores it after the profile
        # has seen it, so nothing done here may touch it (``_forget_if_due``).
        self._writing: tuple[int, int] = (0, 0)

    def forget_revert_timer(self) -> None:
        """Forget the timer (and, with ``forget_controls``, the controls) at the next request."""
        self._forget_pending = True

    @abstractmethod
    def timer_register_s(self) -> float:
        """What the revert timer's register holds, in seconds."""

    @abstractmethod
    def _forget_timer(self, stage: PowerStage, now_s: float, spared: tuple[int, int]) -> None:
        """Lose the revert timer's registers (except the ``spared`` span being written)."""

    @abstractmethod
    def _forget_controls(self, stage: PowerStage, now_s: float, spared: tuple[int, int]) -> None:
        """Lose the power controls too (except the ``spared`` span being written)."""

    @abstractmethod
    def _spans_timer(self, address: int, count: int) -> bool:
        """Whether a write of ``count`` registers at ``address`` covers the timer."""

    @abstractmethod
    def _refuse_timer(self) -> None:
        """Put the timer register back to 0 after a write of it."""

    def _write_begins(self, stage: PowerStage, now_s: float, address: int, count: int) -> None:
        """A write request: what is due happens before it (it spares what the write holds)."""
        self._writing = (address, count)
        self._forget_if_due(stage, now_s)

    def _refresh_begins(self, stage: PowerStage, now_s: float) -> None:
        """Every request, before it is answered (after ``_write_begins`` for a write)."""
        self._forget_if_due(stage, now_s)
        self._writing = (0, 0)

    def _forget_if_due(self, stage: PowerStage, now_s: float) -> None:
        """Forget what is due, sparing the registers the request being answered writes (the
        server stores them after the profile has seen them: they landed after the forgetting)."""
        spared = self._writing
        if self._refused_pending and not self._spans_timer(*spared):
            # The server stores a write after the profile has seen it: a refused write of the
            # timer is put back to 0 here, before the next request is answered.
            self._refused_pending = False
            self._refuse_timer()
        due = self._armed_at_s is not None and (
            self.forget_revert_after_s is not None
            and now_s - self._armed_at_s >= self.forget_revert_after_s
        )
        if not (self._forget_pending or due):
            return
        self._forget_pending = False
        self._armed_at_s = None
        self.forgets += 1
        if not self._spans_timer(*spared):
            self._forget_timer(stage, now_s, spared)
            stage.set_revert_timeout(0.0, now_s)  # 0: never revert
        if self.forget_controls:
            self._forget_controls(stage, now_s, spared)

    def _timer_written(self, stage: PowerStage, timeout_s: float, now_s: float) -> None:
        if self.refuse_revert_timer:
            self._refused_pending = True
            stage.set_revert_timeout(0.0, now_s)
            return
        stage.set_revert_timeout(timeout_s, now_s)
        self._armed_at_s = now_s if timeout_s > 0 else None


class _SunSpecProfile(RevertMemory):
    name = "sunspec"
    models: tuple[int, ...] = ()
    repeats: tuple[tuple[int, int], ...] = ()  # (model, repeats of its repeating group)
    timer: tuple[int, str] = (0, "")  # (model, point) of the revert timer
    controls: tuple[tuple[int, str], ...] = ()  # what ``forget_controls`` also sets to 0

    def __init__(self, stage: PowerStage) -> None:
        super().__init__()
        self.image = SunSpecImage(SUNSPEC_BASE, self.models, repeats=dict(self.repeats))
        self.start_address = SUNSPEC_BASE
        self.image.set_raw(1, "Mn", MANUFACTURER)
        self.image.set_raw(1, "SN", SERIAL)
        self.image.set_raw(1, "Vr", "1.0.0")
        self.image.set_raw(1, "DA", 1)

    @property
    def registers(self) -> list[int]:
        return self.image.registers

    def bind(self, registers: list[int]) -> None:
        self.image.registers = registers

    def _zero(self, points: tuple[tuple[int, str], ...], spared: tuple[int, int]) -> None:
        for model_id, point in points:
            if not self.image.spans(model_id, point, *spared):
                self.image.set_raw(model_id, point, 0)

    def _forget_timer(self, stage: PowerStage, now_s: float, spared: tuple[int, int]) -> None:
        self._zero((self.timer,), spared)

    def _forget_controls(self, stage: PowerStage, now_s: float, spared: tuple[int, int]) -> None:
        self._zero(self.controls, spared)

    def _spans_timer(self, address: int, count: int) -> bool:
        return self.image.spans(*self.timer, address, count)

    def _refuse_timer(self) -> None:
        self.image.set_raw(*self.timer, 0)

    def timer_register_s(self) -> float:
        raw = self.image.get_raw(*self.timer)
        return float(raw) if isinstance(raw, int) else 0.0


class SunSpec700Profile(_SunSpecProfile):
    """Models 1, 701, 702, 704, 713 and 714 (IEEE 1547-2018 DER information model).

    714 (DER DC measurement) has one port, typed EV: its DCV is the stage's DC voltage (380 V
    until the plant sets one), at DCV_SF -1 (tenths of a volt)."""

    name = "sunspec-700"
    models = (1, 701, 702, 704, 713, DC_MODEL)
    repeats = ((DC_MODEL, 1),)
    timer = (704, "WSetRvrtTms")
    controls = ((704, "WSetMod"), (704, "WSetEna"), (704, "WSetEnaRvrt"))

    def __init__(self, stage: PowerStage) -> None:
        super().__init__(stage)
        img = self.image
        img.set_raw(1, "Md", "BD-7 SunSpec 700 simulator")
        for sf in ("W_SF", "VA_SF", "Var_SF", "TotWh_SF", "A_SF", "V_SF", "Hz_SF", "PF_SF"):
            img.set_raw(701, sf, 0)
        img.set_raw(701, "Tmp_SF", -1)
        img.set_raw(701, "ACType", 1)  # split phase
        for sf in ("W_SF", "VA_SF", "Var_SF", "V_SF", "A_SF", "PF_SF", "S_SF"):
            img.set_raw(702, sf, 0)
        ratings = stage.ratings
        img.set_raw(702, "WMaxRtg", round(max(ratings.max_charge_w, ratings.max_discharge_w)))
        img.set_raw(702, "WChaRteMaxRtg", round(ratings.max_charge_w))
        img.set_raw(702, "WDisChaRteMaxRtg", round(ratings.max_discharge_w))
        img.set_raw(702, "WMax", round(max(ratings.max_charge_w, ratings.max_discharge_w)))
        for sf in ("WSet_SF", "WSetPct_SF", "PF_SF", "WMaxLimPct_SF", "VarSet_SF", "VarSetPct_SF"):
            img.set_raw(704, sf, 0)
        for point in ("WSetEna", "WSetMod", "WSetEnaRvrt", "WSetPct", "WSetPctRvrt"):
            img.set_raw(704, point, 0)
        for point in ("WSet", "WSetRvrt", "WSetRvrtTms", "WSetRvrtRem"):
            img.set_raw(704, point, 0)
        img.set_raw(713, "WH_SF", 0)
        img.set_raw(713, "Pct_SF", 0)
        img.set_raw(713, "WHRtg", 40_000)
        img.set_raw(713, "Sta", 0)
        for sf in ("DCA_SF", "DCW_SF", "DCWH_SF", "Tmp_SF"):
            img.set_raw(DC_MODEL, sf, 0)
        img.set_raw(DC_MODEL, "DCV_SF", DCV_SF_714)
        img.set_raw(DC_MODEL, "PrtAlrms", 0)
        img.set_raw(DC_MODEL, DC_PORT.format("PrtTyp"), PRTTYP_EV)
        img.set_raw(DC_MODEL, DC_PORT.format("ID"), 1)
        img.set_raw(DC_MODEL, DC_PORT.format("IDStr"), "EV outlet")
        img.set_raw(DC_MODEL, DC_PORT.format("DCSta"), DCSTA_ON)
        img.set_raw(DC_MODEL, DC_PORT.format("DCAlrm"), 0)
        self._set_dc_voltage(DEFAULT_DC_VOLTAGE_V)

    def _set_dc_voltage(self, volts: float) -> None:
        self.image.set_value(DC_MODEL, DC_PORT.format("DCV"), volts)

    def refresh(self, stage: PowerStage, now_s: float) -> None:
        self._refresh_begins(stage, now_s)
        stage.advance(now_s)
        img = self.image
        img.set_raw(701, "W", round(-stage.actual_w))  # SunSpec + = export
        if stage.fault is not None:
            state = INVST_FAULT
        elif stage.enabled and stage.actual_w != 0.0:
            state = INVST_RUNNING
        else:
            state = INVST_STANDBY
        img.set_raw(701, "InvSt", state)
        img.set_raw(701, "St", 1 if stage.enabled else 0)
        img.set_raw(701, "ConnSt", 1 if stage.enabled else 0)
        img.set_raw(701, "Alrm", 1 << ALRM_MANUFACTURER if stage.fault else 0)
        img.set_raw(701, "TotWhInj", round(stage.energy_discharged_wh))
        img.set_raw(701, "TotWhAbs", round(stage.energy_charged_wh))
        img.set_raw(701, "TmpCab", round(stage.temperature_c * 10))
        img.set_raw(704, "WSetRvrtRem", round(stage.revert_remaining_s(now_s)))
        if stage.dc_voltage_v is not None:
            self._set_dc_voltage(stage.dc_voltage_v)

    def _forget_controls(self, stage: PowerStage, now_s: float, spared: tuple[int, int]) -> None:
        super()._forget_controls(stage, now_s, spared)
        if not self.image.spans(704, "WSetEna", *spared):
            stage.set_enabled(False, now_s)

    def apply_write(self, stage: PowerStage, address: int, count: int, now_s: float) -> None:
        img = self.image
        self._write_begins(stage, now_s, address, count)
        if img.spans(704, "WSetRvrtTms", address, count):
            self._timer_written(stage, float(img.get_raw(704, "WSetRvrtTms") or 0), now_s)
        if any(img.spans(704, p, address, count) for p in ("WSetEna", "WSet", "WSetPct")):
            stage.set_enabled(img.get_raw(704, "WSetEna") == 1, now_s)
            if img.get_raw(704, "WSetMod") == 1:
                export_w = img.get_value(704, "WSet") or 0.0
            else:
                export_w = (
                    (img.get_value(704, "WSetPct") or 0.0)
                    / 100
                    * (img.get_value(702, "WMax") or 0.0)
                )
            stage.command(-export_w, now_s)

    def setpoint_span(self) -> tuple[int, int]:
        return self.image.address(704, "WSet"), 2


class SunSpec100Profile(_SunSpecProfile):
    """Models 1, 103, 120, 121, 123, 124 (inverter and storage, before IEEE 1547-2018).

    124's rates are limits (see the module docstring): the stage runs at ``free_power_w``
    clipped to the window they open."""

    name = "sunspec-100"
    models = (1, 103, 120, 121, 123, 124)
    timer = (124, "InOutWRte_RvrtTms")
    controls = ((124, "StorCtl_Mod"),)

    def __init__(self, stage: PowerStage, *, free_power_w: float = 0.0) -> None:
        super().__init__(stage)
        self.free_power_w = free_power_w
        img = self.image
        ratings = stage.ratings
        img.set_raw(1, "Md", "BD-7 SunSpec 100 simulator")
        for sf in ("A_SF", "V_SF", "W_SF", "Hz_SF", "VA_SF", "VAr_SF", "PF_SF", "WH_SF"):
            img.set_raw(103, sf, 0)
        for sf in ("DCA_SF", "DCV_SF", "DCW_SF", "Tmp_SF"):
            img.set_raw(103, sf, 0)
        img.set_raw(103, "DCV", 380)
        img.set_raw(120, "DERTyp", 82)  # PV_STOR
        for sf in ("WRtg_SF", "MaxChaRte_SF", "MaxDisChaRte_SF"):
            img.set_raw(120, sf, 0)
        img.set_raw(120, "WRtg", round(max(ratings.max_charge_w, ratings.max_discharge_w)))
        img.set_raw(120, "MaxChaRte", round(ratings.max_charge_w))
        img.set_raw(120, "MaxDisChaRte", round(ratings.max_discharge_w))
        img.set_raw(121, "WMax_SF", 0)
        img.set_raw(121, "WMax", round(max(ratings.max_charge_w, ratings.max_discharge_w)))
        img.set_raw(123, "Conn", 0)
        img.set_raw(123, "Conn_RvrtTms", 0)
        img.set_raw(124, "WChaMax_SF", 0)
        img.set_raw(124, "InOutWRte_SF", -1)  # rates in tenths of a percent
        img.set_raw(124, "WChaMax", round(ratings.max_charge_w))
        for point in ("StorCtl_Mod", "OutWRte", "InWRte", "InOutWRte_RvrtTms"):
            img.set_raw(124, point, 0)
        img.set_raw(124, "ChaSt", 6)  # HOLDING

    def refresh(self, stage: PowerStage, now_s: float) -> None:
        self._refresh_begins(stage, now_s)
        stage.advance(now_s)
        img = self.image
        img.set_raw(103, "W", round(-stage.actual_w))  # SunSpec + = export
        if stage.fault is not None:
            state = ST103_FAULT
        elif stage.enabled and stage.actual_w != 0.0:
            state = ST103_MPPT
        else:
            state = ST103_STANDBY
        img.set_raw(103, "St", state)
        img.set_raw(103, "Evt1", 1 << EVT1_HW_TEST_FAILURE if stage.fault else 0)
        img.set_raw(103, "WH", round(stage.energy_discharged_wh) % (1 << 32))
        img.set_raw(103, "TmpCab", round(stage.temperature_c))
        if stage.dc_voltage_v is not None:
            img.set_raw(103, "DCV", round(stage.dc_voltage_v))  # DCV_SF is 0
        if stage.actual_w > 0:
            img.set_raw(124, "ChaSt", 4)  # CHARGING
        elif stage.actual_w < 0:
            img.set_raw(124, "ChaSt", 3)  # DISCHARGING
        else:
            img.set_raw(124, "ChaSt", 6)  # HOLDING

    def window_w(self, stage: PowerStage) -> tuple[float, float]:
        """(lowest, highest) power the rates allow (+ charges): -OutWRte % of WDisChaMax ..
        InWRte % of WChaMax, each edge only while its StorCtl_Mod bit is set."""
        img = self.image
        mode = img.get_raw(124, "StorCtl_Mod")
        mode = mode if isinstance(mode, int) else 0
        lowest_w, highest_w = -stage.ratings.max_discharge_w, stage.ratings.max_charge_w
        if mode >> STORCTL_CHARGE_BIT & 1:
            highest_w = (
                (img.get_value(124, "InWRte") or 0.0) / 100 * (img.get_value(124, "WChaMax") or 0.0)
            )
        if mode >> STORCTL_DISCHARGE_BIT & 1:
            lowest_w = (
                -(img.get_value(124, "OutWRte") or 0.0)
                / 100
                * (img.get_value(120, "MaxDisChaRte") or 0.0)
            )
        return lowest_w, highest_w

    def _steer(self, stage: PowerStage, now_s: float) -> None:
        lowest_w, highest_w = self.window_w(stage)
        stage.command(min(highest_w, max(lowest_w, self.free_power_w)), now_s)

    def _forget_controls(self, stage: PowerStage, now_s: float, spared: tuple[int, int]) -> None:
        super()._forget_controls(stage, now_s, spared)
        self._steer(stage, now_s)  # no limits active: the device goes its own way

    def apply_write(self, stage: PowerStage, address: int, count: int, now_s: float) -> None:
        img = self.image
        self._write_begins(stage, now_s, address, count)
        if img.spans(123, "Conn", address, count):
            stage.set_enabled(img.get_raw(123, "Conn") == 1, now_s)
        if img.spans(124, "InOutWRte_RvrtTms", address, count):
            self._timer_written(stage, float(img.get_raw(124, "InOutWRte_RvrtTms") or 0), now_s)
        if any(img.spans(124, p, address, count) for p in ("StorCtl_Mod", "InWRte", "OutWRte")):
            self._steer(stage, now_s)

    def setpoint_span(self) -> tuple[int, int]:
        return self.image.address(124, "OutWRte"), 2  # OutWRte and InWRte are adjacent


class RegisterMapProfile(RevertMemory):
    """A vendor inverter described by a register map file: the same file the controller reads.

    Input and holding registers share one image here, so a map whose input and holding
    addresses overlap cannot be simulated (real devices keep them apart anyway). Its revert
    timer is a "timeout" heartbeat register; ``forget_controls`` also switches the enable
    register off.
    """

    def __init__(self, register_map: RegisterMap, stage: PowerStage) -> None:
        super().__init__()
        self.map = register_map
        self.name = f"map:{register_map.manufacturer} {register_map.model}"
        spans = [(r.address, r.address + r.words) for r in register_map.registers.values()]
        self.start_address = min(start for start, _ in spans)
        end = max(stop for _, stop in spans)
        self._registers = [0] * (end - self.start_address)
        taken: dict[int, str] = {}
        for name, register in register_map.registers.items():
            for address in range(register.address, register.address + register.words):
                if address in taken:
                    raise ValueError(f"registers {taken[address]} and {name} overlap at {address}")
                taken[address] = name
        roles = register_map.roles
        self._set(roles.max_charge_power, stage.ratings.max_charge_w)
        self._set(roles.max_discharge_power, stage.ratings.max_discharge_w)
        self._set(roles.dc_voltage, 380.0)

    @property
    def registers(self) -> list[int]:
        return self._registers

    def bind(self, registers: list[int]) -> None:
        self._registers = registers

    def _order(self, register: MapRegister) -> WordOrder:
        return WordOrder(register.word_order or self.map.word_order)

    def _set(self, name: str | None, value: float) -> None:
        if name is None:
            return
        register = self.map.registers[name]
        raw: float = value / register.scale
        if register.type != "f32":
            raw = round(raw)
        index = register.address - self.start_address
        self._registers[index : index + register.words] = encode(
            raw, MAP_TYPES[register.type], self._order(register)
        )

    def _get(self, name: str) -> float:
        register = self.map.registers[name]
        index = register.address - self.start_address
        raw = decode(
            self._registers[index : index + register.words],
            MAP_TYPES[register.type],
            self._order(register),
        )
        return float(raw if isinstance(raw, int | float) else 0) * register.scale

    def _touches(self, name: str | None, address: int, count: int) -> bool:
        if name is None:
            return False
        register = self.map.registers[name]
        return address < register.address + register.words and register.address < address + count

    def _forget_timer(self, stage: PowerStage, now_s: float, spared: tuple[int, int]) -> None:
        heartbeat = self.map.roles.heartbeat
        if heartbeat.kind == "timeout" and not self._touches(heartbeat.register_name, *spared):
            self._set(heartbeat.register_name, 0)

    def _forget_controls(self, stage: PowerStage, now_s: float, spared: tuple[int, int]) -> None:
        enable = self.map.roles.enable
        if enable is not None and not self._touches(enable.register_name, *spared):
            self._set(enable.register_name, enable.off)
            stage.set_enabled(False, now_s)

    def _spans_timer(self, address: int, count: int) -> bool:
        return self._touches(self.map.roles.heartbeat.register_name, address, count)

    def _refuse_timer(self) -> None:
        self._set(self.map.roles.heartbeat.register_name, 0)

    def timer_register_s(self) -> float:
        heartbeat = self.map.roles.heartbeat
        return self._get(heartbeat.register_name) if heartbeat.kind == "timeout" else 0.0

    def refresh(self, stage: PowerStage, now_s: float) -> None:
        self._refresh_begins(stage, now_s)
        stage.advance(now_s)
        roles = self.map.roles
        measured = stage.actual_w
        if roles.measured_power.sign == "export_positive":
            measured = -measured
        self._set(roles.measured_power.register_name, measured)
        self._set(roles.energy_charged, round(stage.energy_charged_wh))
        self._set(roles.energy_discharged, round(stage.energy_discharged_wh))
        self._set(roles.temperature, stage.temperature_c)
        if stage.dc_voltage_v is not None:
            self._set(roles.dc_voltage, stage.dc_voltage_v)
        if roles.status is not None:
            fault_value = roles.status.fault_values[0] if roles.status.fault_values else 0
            running = 1 if stage.actual_w != 0.0 else 0
            self._set(roles.status.register_name, fault_value if stage.fault else running)
        if roles.fault is not None:
            code = next(iter(roles.fault.names), 1) if stage.fault else 0
            self._set(roles.fault.register_name, code)

    def apply_write(self, stage: PowerStage, address: int, count: int, now_s: float) -> None:
        roles = self.map.roles
        self._write_begins(stage, now_s, address, count)
        if self._touches(roles.heartbeat.register_name, address, count):
            if roles.heartbeat.kind == "timeout":
                self._timer_written(stage, self._get(roles.heartbeat.register_name), now_s)
            else:
                stage.set_revert_timeout(roles.heartbeat.timeout_s or 0.0, now_s)
        if roles.enable is not None and self._touches(roles.enable.register_name, address, count):
            stage.set_enabled(int(self._get(roles.enable.register_name)) == roles.enable.on, now_s)
        if self._touches(roles.setpoint.register_name, address, count):
            power = self._get(roles.setpoint.register_name)
            if roles.setpoint.sign == "export_positive":
                power = -power
            if roles.enable is None:
                stage.set_enabled(True, now_s)
            stage.command(power, now_s)

    def setpoint_span(self) -> tuple[int, int]:
        register = self.map.registers[self.map.roles.setpoint.register_name]
        return register.address, register.words
