"""The plant: a simulated car on CAN and a simulated inverter on Modbus, coupled by physics.

The car (``hil.vehicle``: CHAdeMO or GB/T 27930, on the simulated charger board's lines) and the
inverter (``hil.inverter``: a pymodbus server over TCP, or RTU on a socat pty pair) run in one
process, and every ``COUPLING_S`` the power the inverter's stage delivers moves the car's battery::

    stage.actual_w (+ charges the vehicle) --> current = power / pack voltage --> BatteryModel
    BatteryModel.voltage_v --> stage.dc_voltage_v (SunSpec 103 DCV, a register map's dc_voltage)

The stage's DC voltage is measured at the charger's output, on the connector's side of its
contactors, where the sessions need it (GB/T 18487.1's voltage match before K1/K2 and its 60 V
unlock, CHAdeMO's 10 V): the pack's voltage while the car's own contactors are closed (GB/T
K5/K6, the CHAdeMO car's main contactor: ``contactors_closed`` of the simulated car), else the
output's bleeder discharges it (``BLEED_TAU_S``).

The charger's insulation monitor (``hil.insulation``) drives the board's ``insulation_ok`` line
every coupling step: OK while the insulation resistance it measures (``--insulation-ohm``, or the
control socket) is above 100 ohm/V of the charger's 500 V, after its response time.

Current flows only while the charger's DC contactors are closed (the board's ``contactors`` line);
power the stage tries to push with them open (none flows, none is counted by its meters) is
counted in ``power_without_contactors_s``, a controller
fault a scenario can assert on. The vehicle's own battery bookkeeping (from the charger's reported
output current) is replaced by this coupling, so the pack follows what the inverter really did.

``time_factor`` accelerates the battery (SoC, temperature) and the plant's energy counters: with
720, each real second moves the pack as 720 simulated seconds would (an hour every 5 s). The
protocols and the inverter keep real time: CAN and Modbus deadlines are
properties of the wires, not of the evening being played.

Fault injection at run time goes through a control socket speaking JSON lines (one request, one
answer per line)::

    {"cmd": "status"}
    {"cmd": "vehicle", "set": {"stop_request": true}}      # a FaultInjection field
    {"cmd": "battery", "set": {"temperature_c": 60}}        # soc_pct, temperature_c
    {"cmd": "inverter", "set": {"drop_replies": true}}      # exception_code, reply_delay_s,
                                                            # busy_probability, stuck_setpoint
    {"cmd": "inverter", "trip": "DC overcurrent"}           # the stage faults
    {"cmd": "inverter", "clear_fault": true}
    {"cmd": "lines", "set": {"emergency_stop": true}}      # the site's E-stop; plugged
    {"cmd": "insulation", "set": {"resistance_ohm": 20000}} # what the IMD measures
    {"cmd": "trace", "since_ns": 0, "frame_ids": [403920628]}  # what was sent and written

Every answer is one JSON object with ``"ok": true`` (and the status), or ``"ok": false`` and an
``"error"``. ``trace`` adds ``"trace"``: ``writes``, the setpoint writes the inverter took as
``[monotonic_ns, target_w]``, and ``frames``, the frames the car sent as ``[monotonic_ns, id,
hex data]`` (optionally only ``frame_ids``), both from ``since_ns`` on (``time.monotonic_ns()``,
comparable across processes on the host). ``PlantClient`` is the synchronous client the tests
and the demo use.

Run it as its own process: ``python -m hil.plant --protocol chademo --lines PATH --tcp
127.0.0.1:5020 --control PATH`` (see ``python -m hil.plant --help`` and docs/hil.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can

from controller.errors import VehicleLinkError
from controller.vehicle.canbus import only_own_group
from controller.vehicle.lines import SharedFileLines
from hil.insulation import HEALTHY_OHM, OHM_PER_V_FAULT, InsulationMonitor
from hil.inverter.field import (
    FieldBehaviour,
    add_field_arguments,
    behaviour_from_args,
    build_simulator,
)
from hil.inverter.ptypair import PtyPair
from hil.inverter.stage import PowerStage, StageRatings
from hil.vehicle.battery import BatteryModel
from hil.vehicle.chademo_ev import ChademoVehicle, ChademoVehicleConfig
from hil.vehicle.faults import FaultInjection
from hil.vehicle.gbt_ev import GbtVehicle, GbtVehicleConfig
from hil.vehicle.runner import VehicleSimulator

log = logging.getLogger("hil.plant")

COUPLING_S = 0.05
# The output's bleed-down with the car's contactors open: 400 V falls below 60 V in 0.4 s and
# below 10 V in 0.7 s (GB/T 18487.1 asks for below 60 V within 1 s of the end).
BLEED_TAU_S = 0.2
MAX_REQUEST_BYTES = 4096
VEHICLE_FAULTS = frozenset(
    {
        "silence",
        "silence_demand",
        "garbage",
        "wrong_dlc",
        "stop_request",
        "over_temperature",
        "charging_forbidden",
    }
)
INVERTER_SETTINGS = {
    "exception_code": (int, type(None)),
    "drop_replies": (bool,),
    "reply_delay_s": (int, float),
    "stuck_setpoint": (bool,),
    "busy_probability": (int, float),
}
BATTERY_SETTINGS = frozenset({"soc_pct", "temperature_c"})
LINE_SETTINGS = frozenset({"emergency_stop", "plugged", "fault_reset"})


class BadRequestError(Exception):
    """A control request the plant refuses (answered with ``ok: false``)."""


# -- CAN between processes ---------------------------------------------------------------------


def vcan0_present() -> bool:
    """Whether the kernel offers vcan0 (``ip link show vcan0`` succeeds)."""
    ip = shutil.which("ip")
    if ip is None:
        return Path("/sys/class/net/vcan0").exists()
    result = subprocess.run(
        [ip, "link", "show", "vcan0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode == 0


def pick_can(group: str | None = None) -> tuple[str, str]:
    """(interface, channel) for CAN between processes: socketcan vcan0 where the kernel has it,
    else python-can's udp_multicast on loopback (a fresh group unless ``group`` is given)."""
    if vcan0_present():
        return "socketcan", "vcan0"
    if group is None:
        group = "239.74.{}.{}".format(*(1 + b % 254 for b in uuid.uuid4().bytes[:2]))
    return "udp_multicast", group


# -- the coupled battery -----------------------------------------------------------------------


@dataclass(slots=True)
class PlantBattery(BatteryModel):
    """A BatteryModel moved only by the plant: the vehicle's own ``step`` calls change nothing.

    The simulated car integrates the current the charger *reports*; in the plant the pack must
    follow the current the inverter *delivers*, so ``drive`` is the only way to move it.
    """

    def step(self, current_a: float, dt_s: float) -> None:
        """The vehicle's bookkeeping: ignored, the plant drives the pack."""

    def drive(self, current_a: float, dt_s: float) -> None:
        """Apply ``current_a`` (+ charges) for ``dt_s`` simulated seconds."""
        BatteryModel.step(self, current_a, dt_s)


# -- the plant ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlantConfig:
    """Everything the plant is built from (the command line, or a test)."""

    protocol: str = "chademo"  # chademo | gbt27930
    mode: str = "charge"  # what the car asks for: charge (may still discharge on CHAdeMO)
    soc_pct: float = 45.0
    target_soc_pct: float = 80.0
    capacity_kwh: float = 40.0
    min_discharge_level_pct: float = 30.0
    can_interface: str = "udp_multicast"
    can_channel: str = "239.74.163.2"
    lines_path: Path | None = None
    tcp: tuple[str, int] | None = ("127.0.0.1", 5020)
    rtu_dir: Path | None = None  # socat pty pair here: inverter-tty and controller-tty
    baudrate: int = 19200
    profile: str = "sunspec-100"
    unit_id: int = 1
    max_charge_w: float = 7400.0
    max_discharge_w: float = 7400.0
    time_factor: float = 1.0
    control_path: Path | None = None
    behaviour: FieldBehaviour = field(default_factory=FieldBehaviour)
    insulation_ohm: float = HEALTHY_OHM  # what the charger's insulation monitor measures


@dataclass(slots=True)
class PlantCounters:
    """What the plant measured, in simulated time."""

    imported_wh: float = 0.0  # into the vehicle (grid import)
    exported_wh: float = 0.0  # out of the vehicle (grid export)
    lowest_soc_pct: float = 100.0
    highest_soc_pct: float = 0.0
    # The largest power that flowed each way (contactors closed), W; the demo checks its limits
    # on these, as delivered, not as commanded.
    largest_charge_w: float = 0.0
    largest_discharge_w: float = 0.0
    max_battery_temp_c: float = -273.0
    power_without_contactors_s: float = 0.0
    simulated_s: float = 0.0
    samples: list[float] = field(default_factory=list)


class Plant:
    """The car and the inverter in one process, coupled every ``COUPLING_S``."""

    def __init__(self, config: PlantConfig) -> None:
        self.config = config
        self.battery = PlantBattery(capacity_kwh=config.capacity_kwh, soc_pct=config.soc_pct)
        self.faults = FaultInjection()
        self.stage = PowerStage(
            StageRatings(max_charge_w=config.max_charge_w, max_discharge_w=config.max_discharge_w)
        )
        self.inverter = build_simulator(
            config.profile, self.stage, config.behaviour, unit_id=config.unit_id
        )
        self.lines: SharedFileLines | None = None
        self.imd = InsulationMonitor(resistance_ohm=config.insulation_ohm)
        self.vehicle: ChademoVehicle | GbtVehicle | None = None
        self.simulator: VehicleSimulator | None = None
        self.counters = PlantCounters(
            lowest_soc_pct=config.soc_pct,
            highest_soc_pct=config.soc_pct,
            max_battery_temp_c=self.battery.temperature_c,
        )
        self.ready = False
        self.controller_tty: Path | None = None
        self._last_s: float | None = None
        self._metered = (0.0, 0.0)  # the stage's meters at the last coupling step, Wh

    # -- physics ------------------------------------------------------------------------------

    @property
    def contactors_closed(self) -> bool:
        """The charger's DC contactors (the board's line); without lines, always closed."""
        return self.lines is None or self.lines.outputs.contactors

    def couple(self, now_s: float) -> None:
        """One coupling step: the stage's power moves the battery, the pack sets the DC bus."""
        # Whether the stage tries to push power (enabled, healthy, a setpoint) with the
        # contactors open: a controller fault. With them open no current can flow.
        pushing = self.stage.enabled and self.stage.fault is None and self.stage.target_w != 0
        imd_ok = self.imd.ok(now_s)
        if self.lines is not None and self.lines.insulation_ok != imd_ok:
            self.lines.insulation_ok = imd_ok
        self.stage.dc_connected = self.contactors_closed
        self.stage.advance(now_s)
        last, self._last_s = self._last_s, now_s
        if last is None:
            self.stage.dc_voltage_v = self._output_voltage_v(0.0)
            self._metered = (self.stage.energy_charged_wh, self.stage.energy_discharged_wh)
            return
        sim_dt_s = max(0.0, now_s - last) * self.config.time_factor
        power_w = self.stage.actual_w
        c = self.counters
        if not self.contactors_closed:
            if pushing:
                c.power_without_contactors_s += now_s - last
            power_w = 0.0
        # P = V * I with V the terminal voltage at the present current: a step of the
        # fixed point is plenty at 50 ms.
        volts = max(1.0, self.battery.open_circuit_voltage_v + self.battery.current_a * 0.1)
        current_a = power_w / volts
        c.largest_charge_w = max(c.largest_charge_w, power_w)
        c.largest_discharge_w = max(c.largest_discharge_w, -power_w)
        self.battery.drive(current_a, sim_dt_s)
        self.stage.dc_voltage_v = self._output_voltage_v(now_s - last)
        # The energy that crossed the DC circuit is what the stage's ideal meters counted since
        # the last step (they integrate every change of power, Modbus writes included), in
        # simulated time.
        charged_wh, discharged_wh = self.stage.energy_charged_wh, self.stage.energy_discharged_wh
        c.imported_wh += (charged_wh - self._metered[0]) * self.config.time_factor
        c.exported_wh += (discharged_wh - self._metered[1]) * self.config.time_factor
        self._metered = (charged_wh, discharged_wh)
        c.simulated_s += sim_dt_s
        soc = self.battery.soc_pct
        c.lowest_soc_pct = min(c.lowest_soc_pct, soc)
        c.highest_soc_pct = max(c.highest_soc_pct, soc)
        c.max_battery_temp_c = max(c.max_battery_temp_c, self.battery.temperature_c)

    @property
    def vehicle_contactors_closed(self) -> bool:
        """The car's own DC contactors (GB/T K5/K6); a car that does not model them: closed."""
        return bool(getattr(self.vehicle, "contactors_closed", True))

    def _output_voltage_v(self, dt_s: float) -> float:
        """The voltage at the charger's output: the pack's through the car's closed contactors,
        else what the bleeder leaves of the last value after ``dt_s`` real seconds."""
        if self.vehicle_contactors_closed:
            return self.battery.voltage_v
        previous_v = self.stage.dc_voltage_v or 0.0
        return previous_v * math.exp(-max(0.0, dt_s) / BLEED_TAU_S)

    def status(self) -> dict[str, Any]:
        """The plant as the control socket reports it."""
        s, b, c = self.stage, self.battery, self.counters
        vehicle = self.vehicle
        return {
            "ready": self.ready,
            "protocol": self.config.protocol,
            "can": f"{self.config.can_interface}:{self.config.can_channel}",
            "inverter": self.inverter.profile.name,
            "controller_tty": str(self.controller_tty) if self.controller_tty else None,
            "time_factor": self.config.time_factor,
            "actual_w": round(s.actual_w, 1),
            "target_w": round(s.target_w, 1),
            "enabled": s.enabled,
            "inverter_fault": s.fault,
            "reverts": s.reverts,
            "revert_timeout_s": s.revert_timeout_s,
            "setpoint_writes": self.inverter.setpoint_writes,
            # The field behaviours' counters (hil.inverter.field).
            "requests": self.inverter.requests,
            "busy_answers": self.inverter.busy_answers,
            "connections": self.inverter.connections,
            "connections_refused": self.inverter.connections_refused,
            "revert_forgets": getattr(self.inverter.profile, "forgets", 0),
            # The SoC and largest power figures are not rounded: the promises are judged on them,
            # and rounding the SoC to 3 decimals would turn 39.9996 % into the 40 % floor.
            "soc_pct": b.soc_pct,
            "start_soc_pct": self.config.soc_pct,
            "pack_voltage_v": round(b.voltage_v, 1),
            "pack_current_a": round(b.current_a, 2),
            "battery_temp_c": round(b.temperature_c, 2),
            "contactors_closed": self.contactors_closed,
            "vehicle_contactors_closed": self.vehicle_contactors_closed,
            "output_voltage_v": round(self.stage.dc_voltage_v or 0.0, 1),
            "emergency_stop": self.lines.emergency_stop if self.lines else False,
            "insulation_ohm": self.imd.resistance_ohm,
            "insulation_ok": self.lines.insulation_ok if self.lines else None,
            "vehicle_state": str(vehicle.state) if vehicle else None,
            "vehicle_stop_reason": getattr(vehicle, "stop_reason", "") if vehicle else "",
            "imported_wh": round(c.imported_wh, 2),
            "exported_wh": round(c.exported_wh, 2),
            "lowest_soc_pct": c.lowest_soc_pct,
            "highest_soc_pct": c.highest_soc_pct,
            "largest_charge_w": c.largest_charge_w,
            "largest_discharge_w": c.largest_discharge_w,
            "max_battery_temp_c": round(c.max_battery_temp_c, 2),
            "power_without_contactors_s": round(c.power_without_contactors_s, 3),
            "simulated_s": round(c.simulated_s, 1),
        }

    # -- control ------------------------------------------------------------------------------

    def handle(self, request: object) -> dict[str, Any]:
        """One control request (already parsed JSON); never raises for bad input."""
        if not isinstance(request, dict):
            return {"ok": False, "error": "a request is a JSON object"}
        cmd = request.get("cmd")
        extra: dict[str, Any] = {}
        try:
            if cmd == "status":
                pass
            elif cmd == "trace":
                extra["trace"] = self._trace(request)
            elif cmd == "vehicle":
                self._set_vehicle(request.get("set"))
            elif cmd == "battery":
                self._set_battery(request.get("set"))
            elif cmd == "inverter":
                self._set_inverter(request)
            elif cmd == "lines":
                self._set_lines(request.get("set"))
            elif cmd == "insulation":
                self._set_insulation(request.get("set"))
            else:
                return {"ok": False, "error": f"unknown cmd {cmd!r}"}
        except BadRequestError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "status": self.status(), **extra}

    def _trace(self, request: dict[str, Any]) -> dict[str, Any]:
        since_ns = request.get("since_ns", 0)
        frame_ids = request.get("frame_ids")
        if not isinstance(since_ns, int) or isinstance(since_ns, bool):
            raise BadRequestError("trace: 'since_ns' is an integer (time.monotonic_ns())")
        if frame_ids is not None and (
            not isinstance(frame_ids, list) or not all(isinstance(i, int) for i in frame_ids)
        ):
            raise BadRequestError("trace: 'frame_ids' is a list of CAN ids")
        wanted = None if frame_ids is None else frozenset(frame_ids)
        sent = self.simulator.sent_log if self.simulator is not None else ()
        return {
            "writes": [[t, w] for t, w in self.inverter.write_log if t >= since_ns],
            "frames": [
                [t, f.arbitration_id, f.data.hex()]
                for t, f in sent
                if t >= since_ns and (wanted is None or f.arbitration_id in wanted)
            ],
        }

    def _set_vehicle(self, settings: object) -> None:
        if not isinstance(settings, dict) or not settings:
            raise BadRequestError("vehicle: 'set' is an object of fault flags")
        for name, value in settings.items():
            if name not in VEHICLE_FAULTS or not isinstance(value, bool):
                raise BadRequestError(f"vehicle: {name!r} is not a fault flag (true/false)")
        for name, value in settings.items():
            setattr(self.faults, name, value)
            log.warning("vehicle fault %s = %s", name, value)

    def _set_battery(self, settings: object) -> None:
        if not isinstance(settings, dict) or not settings:
            raise BadRequestError("battery: 'set' is an object")
        for name, value in settings.items():
            if name not in BATTERY_SETTINGS or isinstance(value, bool):
                raise BadRequestError(f"battery: {name!r} cannot be set")
            if not isinstance(value, int | float):
                raise BadRequestError(f"battery: {name} must be a number")
        for name, value in settings.items():
            setattr(self.battery, name, float(value))
            log.warning("battery %s = %s", name, value)

    def _set_lines(self, settings: object) -> None:
        if self.lines is None:
            raise BadRequestError("lines: the plant runs without a lines file (--lines)")
        if not isinstance(settings, dict) or not settings:
            raise BadRequestError("lines: 'set' is an object of line values")
        for name, value in settings.items():
            if name not in LINE_SETTINGS or not isinstance(value, bool):
                raise BadRequestError(f"lines: {name!r} is not a line the site drives (true/false)")
        for name, value in settings.items():
            setattr(self.lines, name, value)
            log.warning("line %s = %s", name, value)

    def _set_insulation(self, settings: object) -> None:
        if not isinstance(settings, dict) or set(settings) != {"resistance_ohm"}:
            raise BadRequestError("insulation: 'set' is {\"resistance_ohm\": a number}")
        value = settings["resistance_ohm"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise BadRequestError("insulation: resistance_ohm must be a number, 0 or more")
        self.imd.resistance_ohm = float(value)
        log.warning("insulation resistance = %s ohm (%s)", value, self.imd)

    def _set_inverter(self, request: dict[str, Any]) -> None:
        settings = request.get("set", {})
        if not isinstance(settings, dict):
            raise BadRequestError("inverter: 'set' is an object")
        for name, value in settings.items():
            kinds = INVERTER_SETTINGS.get(name)
            if (
                kinds is None
                or not isinstance(value, kinds)
                or isinstance(value, bool) != (kinds == (bool,))
            ):
                raise BadRequestError(f"inverter: {name!r} cannot be set to {value!r}")
            if name == "busy_probability" and not (
                isinstance(value, int | float) and 0 <= value <= 1
            ):
                raise BadRequestError("inverter: 'busy_probability' is between 0 and 1")
        trip = request.get("trip")
        if trip is not None and not isinstance(trip, str):
            raise BadRequestError("inverter: 'trip' is the fault's reason, a string")
        for name, value in settings.items():
            setattr(self.inverter, name, value)
            log.warning("inverter %s = %s", name, value)
        if trip:
            self.inverter.trip(trip)
            log.warning("inverter tripped: %s", trip)
        if request.get("clear_fault") is True:
            self.inverter.clear_fault()
            log.warning("inverter fault cleared")

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := await reader.readline():
                if len(line) > MAX_REQUEST_BYTES:
                    answer: dict[str, Any] = {"ok": False, "error": "request too long"}
                else:
                    try:
                        answer = self.handle(json.loads(line))
                    except ValueError:
                        answer = {"ok": False, "error": "not JSON"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    # -- running ------------------------------------------------------------------------------

    def _build_vehicle(self) -> ChademoVehicle | GbtVehicle:
        cfg = self.config
        if cfg.protocol == "chademo":
            return ChademoVehicle(
                self.battery,
                self.faults,
                config=ChademoVehicleConfig(
                    mode=cfg.mode,
                    target_soc_pct=cfg.target_soc_pct,
                    min_discharge_level_pct=round(cfg.min_discharge_level_pct),
                ),
                lines=self.lines,
            )
        return GbtVehicle(
            self.battery,
            self.faults,
            config=GbtVehicleConfig(
                mode=cfg.mode,
                target_soc_pct=cfg.target_soc_pct,
                min_discharge_level_pct=cfg.min_discharge_level_pct,
            ),
            lines=self.lines,
        )

    async def run(self) -> None:
        """Run until cancelled: inverter server, car on the bus, coupling, control socket."""
        cfg = self.config
        async with contextlib.AsyncExitStack() as stack:
            if cfg.lines_path is not None:
                self.lines = SharedFileLines(cfg.lines_path, side="vehicle")
                self.lines.open()
                stack.callback(self.lines.close)  # the car leaves: unplugged, k released
                self.lines.plugged = True
            await self._start_inverter(stack)
            try:
                bus = can.Bus(interface=cfg.can_interface, channel=cfg.can_channel)
            except (can.CanError, OSError, ValueError, ImportError) as exc:
                raise VehicleLinkError(
                    f"cannot open {cfg.can_interface}:{cfg.can_channel}: {exc}"
                ) from None
            stack.callback(bus.shutdown)
            if cfg.can_interface == "udp_multicast":
                only_own_group(bus)  # not every group joined on the port (as the daemon does)
            log.info("CAN: %s on %s", cfg.can_interface, cfg.can_channel)
            self.vehicle = self._build_vehicle()
            simulator = self.simulator = VehicleSimulator(self.vehicle, bus)
            if cfg.control_path is not None:
                cfg.control_path.unlink(missing_ok=True)
                server = await asyncio.start_unix_server(
                    self._serve_client, path=str(cfg.control_path)
                )
                stack.push_async_callback(self._close_server, server)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(simulator.run(), name="vehicle")
                tasks.create_task(self._couple_forever(), name="coupling")
                self.ready = True
                log.info("plant ready: %s", json.dumps(self.status()))

    async def _close_server(self, server: asyncio.Server) -> None:
        server.close()
        await server.wait_closed()
        if self.config.control_path is not None:
            self.config.control_path.unlink(missing_ok=True)

    async def _start_inverter(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        if cfg.rtu_dir is not None:
            pair = stack.enter_context(PtyPair(cfg.rtu_dir))
            await self.inverter.start_serial(str(pair.inverter_end), baudrate=cfg.baudrate)
            self.controller_tty = pair.controller_end
            where = f"rtu {pair.controller_end} {cfg.baudrate} baud"
        else:
            assert cfg.tcp is not None
            port = await self.inverter.start_tcp(*cfg.tcp)
            where = f"tcp {cfg.tcp[0]}:{port}"
        stack.push_async_callback(self.inverter.stop)
        log.info("inverter (%s) on %s, unit %d", self.inverter.profile.name, where, cfg.unit_id)

    async def _couple_forever(self) -> None:
        while True:
            self.couple(time.monotonic())
            await asyncio.sleep(COUPLING_S)


# -- the client --------------------------------------------------------------------------------


class PlantError(Exception):
    """The plant refused a request or could not be reached."""


class PlantClient:
    """Talks to a running plant's control socket: one connection per request."""

    def __init__(self, path: Path, timeout_s: float = 2.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; return the status from the answer."""
        status: dict[str, Any] = self.ask(request)["status"]
        return status

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; return the whole answer (``trace`` answers carry more)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout_s)
                sock.connect(str(self.path))
                sock.sendall(json.dumps(request).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise PlantError(f"plant at {self.path}: {exc}") from None
        try:
            answer = json.loads(data)
        except ValueError:
            raise PlantError(f"plant at {self.path}: unreadable answer {data!r}") from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            raise PlantError(f"plant refused {request}: {answer}")
        return answer

    def status(self) -> dict[str, Any]:
        return self.request({"cmd": "status"})

    def wait_ready(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Poll until the plant answers and says it is ready."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status = self.status()
                if status["ready"]:
                    return status
            except PlantError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise PlantError(f"plant at {self.path} not ready within {timeout_s} s")
            time.sleep(0.05)


# -- the command line --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> PlantConfig:
    """The command line, as a PlantConfig."""
    parser = argparse.ArgumentParser(prog="python -m hil.plant", description=__doc__)
    parser.add_argument("--protocol", choices=("chademo", "gbt27930"), default="chademo")
    parser.add_argument("--mode", choices=("charge", "discharge"), default="charge")
    parser.add_argument("--soc", type=float, default=45.0, help="initial SoC, %% (default 45)")
    parser.add_argument("--target-soc", type=float, default=80.0, help="the car stops here, %%")
    parser.add_argument("--min-discharge-soc", type=float, default=30.0)
    parser.add_argument("--capacity-kwh", type=float, default=40.0)
    parser.add_argument(
        "--can",
        default="auto",
        metavar="INTERFACE:CHANNEL",
        help="auto (vcan0 if present, else udp_multicast), or e.g. udp_multicast:239.74.163.2",
    )
    parser.add_argument("--lines", type=Path, default=None, help="the simulated board's file")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--tcp", default=None, metavar="HOST:PORT", help="default 127.0.0.1:5020")
    where.add_argument(
        "--rtu-dir", type=Path, default=None, help="make a socat pty pair here (controller-tty)"
    )
    parser.add_argument("--baudrate", type=int, default=19200)
    parser.add_argument("--profile", default="sunspec-100", help="sunspec-700|sunspec-100|map")
    parser.add_argument("--unit-id", type=int, default=1)
    parser.add_argument("--max-charge-w", type=float, default=7400.0)
    parser.add_argument("--max-discharge-w", type=float, default=7400.0)
    parser.add_argument("--time-factor", type=float, default=1.0, help="simulated s per real s")
    parser.add_argument("--control", type=Path, default=None, help="JSON-lines control socket")
    parser.add_argument(
        "--insulation-ohm",
        type=float,
        default=HEALTHY_OHM,
        help="the insulation resistance the charger's IMD measures, ohm (alarm at or below "
        f"{OHM_PER_V_FAULT * 500:g}: 100 ohm/V of 500 V)",
    )
    add_field_arguments(parser)
    args = parser.parse_args(argv)
    if args.time_factor <= 0 or args.capacity_kwh <= 0:
        parser.error("--time-factor and --capacity-kwh must be positive")
    if not args.insulation_ohm >= 0:
        parser.error("--insulation-ohm is a resistance, 0 or more")
    behaviour = behaviour_from_args(args)
    if problems := behaviour.problems(args.profile):
        parser.error("; ".join(problems))
    if args.can == "auto":
        interface, channel = pick_can()
    else:
        interface, _, channel = args.can.partition(":")
        if interface not in ("socketcan", "udp_multicast", "virtual") or not channel:
            parser.error("--can is auto or INTERFACE:CHANNEL")
    tcp: tuple[str, int] | None = None
    if args.rtu_dir is None:
        host, _, port = (args.tcp or "127.0.0.1:5020").rpartition(":")
        tcp = (host or "127.0.0.1", int(port))
    return PlantConfig(
        protocol=args.protocol,
        mode=args.mode,
        soc_pct=args.soc,
        target_soc_pct=args.target_soc,
        capacity_kwh=args.capacity_kwh,
        min_discharge_level_pct=args.min_discharge_soc,
        can_interface=interface,
        can_channel=channel,
        lines_path=args.lines,
        tcp=tcp,
        rtu_dir=args.rtu_dir,
        baudrate=args.baudrate,
        profile=args.profile,
        unit_id=args.unit_id,
        max_charge_w=args.max_charge_w,
        max_discharge_w=args.max_discharge_w,
        time_factor=args.time_factor,
        control_path=args.control,
        behaviour=behaviour,
        insulation_ohm=args.insulation_ohm,
    )


async def _main(config: PlantConfig) -> None:
    task = asyncio.current_task()
    if task is not None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
    await Plant(config).run()


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on SIGTERM/Ctrl-C, 1 when the bus or the inverter cannot start."""
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info(
        "CAN interface: %s (%s)",
        config.can_interface,
        "vcan0 found" if config.can_interface == "socketcan" else "no vcan0 in this kernel",
    )
    try:
        asyncio.run(_main(config))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 0
    except (VehicleLinkError, OSError, RuntimeError, ExceptionGroup) as exc:
        errors = exc.exceptions if isinstance(exc, ExceptionGroup) else (exc,)
        for error in errors:
            log.error("plant failed: %s: %s", type(error).__name__, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
