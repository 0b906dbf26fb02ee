"""``v2g-controller probe inverter``: does the inverter answer, what does it have, what does it say.

Read-only: the SunSpec base is looked for at 40000, 0 and 50000 (each answer shown), the model
chain is walked (``SunSpecDevice.discover``) and the models a technician needs are read: identity
(1), ratings (702, 120, 121, 124, 713), measured values (701, 103, 713, 714, 802), the revert
timer (704, 124) and the faults as the daemon's own driver reads them. A vendor map
(``profile: register_map``) has every register read and shown, then the driver's reading.

A failure is put in plain language: a gateway's exception 0x0A/0x0B or a device that answers
nothing usually means a wrong ``unit_id``; an answer that comes only after a longer wait means
``timeout_s`` is too short (the probe asks once more with ``LONG_TIMEOUT_S`` to tell the two
apart); exception 0x02 everywhere means no SunSpec registers there.

The write test (``write_test``) is the only writer: the driver's own setup (revert timer armed,
0 W), the commanded power re-sent every ``HEARTBEAT_MAX_S`` (at most a third of the revert
time) for the given seconds, then 0 W with the stage disabled, in a ``finally``: also when it is
cancelled (Ctrl-C, SIGTERM) or a request fails. That 0 W runs in a task of its own that a
further cancellation does not stop, and is tried again on link errors (a reconnect in its
backoff) for up to ``END_TIMEOUT_S``. Not guaranteed: when it was not written by then (or the
process is killed outright), the inverter's revert timer is what ends the power, and it says so.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from controller.config import InverterConfig, RegisterMap
from controller.errors import InverterLinkError, ProtocolError
from controller.inverter.codec import RegType, WordOrder, decode
from controller.inverter.drivers import (
    InverterDriver,
    SunSpec100Driver,
    SunSpec700Driver,
    SunSpecDriver,
)
from controller.inverter.regmap import MAP_TYPES, RegisterMapDriver, batches
from controller.inverter.sunspec import (
    BASE_ADDRESSES,
    SUNS_MARKER,
    ModelValues,
    SunSpecDevice,
)
from controller.inverter.sunspec_models import GroupLayoutError, UnknownPointError
from controller.inverter.transport import (
    EXCEPTION_NAMES,
    Endpoint,
    ModbusExceptionResponse,
    ModbusTransport,
    NotConnectedError,
    SerialEndpoint,
    TcpEndpoint,
)
from controller.probe.report import Report

# A base (or register) that answered nothing is asked once more with this timeout: an answer
# then means timeout_s is too short, none means the device does not answer this unit id at all.
LONG_TIMEOUT_S = 5.0
SLOW_FRACTION = 0.5  # a reply slower than this share of timeout_s is worth a warning
HEARTBEAT_MAX_S = 1.0  # the write test re-sends its command (and reads) at least this often
END_TIMEOUT_S = 10.0  # the final 0 W: bounded, the revert timer is the net behind it
END_RETRY_S = 0.1  # the final 0 W tried again this often (a reconnect in backoff fails at once)
SETTLE_READS = 8  # after the final 0 W, readings until the stage has ramped down
SETTLE_INTERVAL_S = 0.25
SETTLED_W = 50.0
MAX_PORTS_SHOWN = 8  # 714 DC ports listed at most
GATEWAY_CODES = frozenset({10, 11})  # Modbus application protocol section 7: gateway path / target
DEVICE_FAILURE = 4
ILLEGAL_ADDRESS = 2

# What is shown of each model, in order: (model, points).
IDENTITY = ("Mn", "Md", "SN", "Vr")
RATINGS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (702, ("WMaxRtg", "WChaRteMaxRtg", "WDisChaRteMaxRtg", "VAMaxRtg", "VNomRtg")),
    (120, ("WRtg", "MaxChaRte", "MaxDisChaRte", "WHRtg")),
    (121, ("WMax",)),
    (124, ("WChaMax",)),
    (713, ("WHRtg",)),
)
MEASURED: tuple[tuple[int, tuple[str, ...]], ...] = (
    (701, ("InvSt", "ConnSt", "Alrm", "W", "VA", "Hz", "TmpCab", "TotWhInj", "TotWhAbs")),
    (103, ("St", "Evt1", "W", "DCV", "DCA", "Hz", "TmpCab", "WH")),
    (713, ("SoC", "Sta")),
    (714, ("NPrt", "PrtAlrms", "DCW")),
    (802, ("State", "Evt1", "SoC", "V")),
)
CONTROLS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (704, ("WSetEna", "WSetMod", "WSet", "WSetEnaRvrt", "WSetRvrt", "WSetRvrtTms", "WSetRvrtRem")),
    (703, ("ES",)),
    (124, ("StorCtl_Mod", "InWRte", "OutWRte", "InOutWRte_RvrtTms")),
    (123, ("Conn",)),
)
PORT_POINTS = ("PrtTyp", "DCV", "DCA")
ENUMS = frozenset({RegType.ENUM16, RegType.ENUM32})
BITFIELDS = frozenset({RegType.BITFIELD16, RegType.BITFIELD32, RegType.BITFIELD64})


@dataclass(frozen=True, slots=True)
class WriteTest:
    """``--write-test POWER_W --for SECONDS``: + charges the vehicle, - discharges it."""

    power_w: float
    duration_s: float


def endpoint_of(cfg: InverterConfig) -> Endpoint:
    """The Modbus endpoint the config names (as the daemon builds it)."""
    if cfg.tcp is not None:
        return TcpEndpoint(cfg.tcp.host, cfg.tcp.port)
    assert cfg.rtu is not None  # noqa: S101  the config model requires the chosen section
    return SerialEndpoint(
        cfg.rtu.device,
        baudrate=cfg.rtu.baudrate,
        parity=cfg.rtu.parity,
        stop_bits=cfg.rtu.stop_bits,
        byte_size=cfg.rtu.byte_size,
    )


def transport_of(
    cfg: InverterConfig, *, timeout_s: float | None = None, retries: int | None = None
) -> ModbusTransport:
    return ModbusTransport(
        endpoint_of(cfg),
        cfg.unit_id,
        timeout_s=cfg.timeout_s if timeout_s is None else timeout_s,
        retries=cfg.retries if retries is None else retries,
    )


def exception_name(code: int) -> str:
    return EXCEPTION_NAMES.get(code, "unknown")


async def probe_inverter(
    cfg: InverterConfig, report: Report, *, register_map: RegisterMap | None = None
) -> bool:
    """The read-only probe; True when nothing went wrong (the write test may follow).

    ``register_map``: the map ``cfg.register_map`` names, read by the caller (profile
    register_map)."""
    transport = transport_of(cfg)
    report.heading(
        f"inverter: {transport.describe()}, timeout_s {cfg.timeout_s:g}, retries "
        f"{cfg.retries}, profile {cfg.profile}"
    )
    problems_before = len(report.problems)
    try:
        if cfg.profile == "register_map":
            await _probe_map(cfg, _required(cfg, register_map), transport, report)
        else:
            await _probe_sunspec(cfg, transport, report)
    finally:
        await transport.close()
    return len(report.problems) == problems_before


# -- first contact ---------------------------------------------------------------------------


def _not_connected(cfg: InverterConfig, report: Report, exc: InverterLinkError) -> None:
    if cfg.tcp is not None:
        report.problem(
            f"cannot connect: {exc}",
            f"the inverter's address {cfg.tcp.host} and port {cfg.tcp.port} (Modbus TCP is "
            "usually 502)",
            "that its Modbus TCP server is switched on, and no firewall is in between",
            "that no other Modbus client holds its only connection (stop the daemon: "
            "systemctl stop v2g-controller)",
        )
        return
    assert cfg.rtu is not None  # noqa: S101  the config model requires the chosen section
    report.problem(
        f"cannot open the serial port: {exc}",
        f"the device {cfg.rtu.device} exists (ls -l /dev/serial/by-id/) and this user may use "
        "it (group dialout)",
        "that the daemon is not running and holding the port (systemctl stop v2g-controller)",
    )


async def _silence(cfg: InverterConfig, report: Report, address: int, function: int) -> None:
    """Nothing answered at ``address``: too short a timeout, or nobody home at this unit id."""
    longer = max(LONG_TIMEOUT_S, cfg.timeout_s * 2)
    transport = transport_of(cfg, timeout_s=longer, retries=0)
    started_s = time.monotonic()
    try:
        await transport.read_registers(address, 2, function=function)
        answered = True
    except ModbusExceptionResponse:
        answered = True  # an exception reply is an answer: the device is there
    except InverterLinkError:
        answered = False
    finally:
        await transport.close()
    took_s = time.monotonic() - started_s
    if answered:
        report.problem(
            f"the inverter answers, but only after {took_s:.2f} s: inverter.timeout_s "
            f"{cfg.timeout_s:g} is too short",
            f"set inverter.timeout_s to at least {math.ceil(took_s * 2 * 10) / 10:g} (twice the "
            "time it took)",
        )
        return
    where = "on the network" if cfg.tcp is not None else "on the RS-485 line"
    checks = [
        f"inverter.unit_id {cfg.unit_id}: the device ignores requests for a unit id it does not "
        "have (its Modbus address or slave id, set on its display or in its web page)",
    ]
    if cfg.rtu is not None:
        checks += [
            f"baudrate {cfg.rtu.baudrate}, parity {cfg.rtu.parity}, stop bits "
            f"{cfg.rtu.stop_bits} match the inverter's settings",
            "the wiring: A/B (D+/D-) not swapped, a 120 ohm termination at each end, a common "
            "ground",
        ]
    else:
        checks.append("that the device at that address is the inverter (not a data logger)")
    report.problem(
        f"no answer from unit {cfg.unit_id} {where}, not even after {longer:g} s", *checks
    )


def _exception_problem(cfg: InverterConfig, report: Report, codes: set[int], where: str) -> None:
    names = ", ".join(f"0x{code:02X} {exception_name(code)}" for code in sorted(codes))
    if codes & GATEWAY_CODES:
        report.problem(
            f"a Modbus gateway answered ({names}) {where}: it cannot reach unit {cfg.unit_id}",
            f"inverter.unit_id {cfg.unit_id} is the inverter's Modbus address behind the gateway",
            "the gateway's serial side: wiring, baud rate and parity toward the inverter",
        )
    elif codes == {ILLEGAL_ADDRESS}:
        report.problem(
            f"the device answers, but has no such registers ({names}) {where}",
            f"inverter.unit_id {cfg.unit_id}: another device (a meter, a data logger) may have "
            "answered",
            "profile: sunspec needs a SunSpec device; for another protocol use profile: "
            "register_map with the vendor's map (docs/inverter.md)",
        )
    elif DEVICE_FAILURE in codes:
        report.problem(
            f"the device answered {names} {where}",
            f"inverter.unit_id {cfg.unit_id}: some devices and gateways answer 0x04 for a unit "
            "id they do not serve",
            "the inverter's own log or display for an internal fault",
        )
    else:
        report.problem(
            f"the device answered {names} {where}",
            f"inverter.unit_id {cfg.unit_id}, and that its Modbus/SunSpec interface is enabled",
        )


# -- SunSpec ---------------------------------------------------------------------------------


async def _find_base(cfg: InverterConfig, transport: ModbusTransport, report: Report) -> bool:
    """Looks for 'SunS' at each base as discovery does, showing each answer; True when found."""
    codes: set[int] = set()
    silent = 0
    values_seen = 0  # bases that answered with registers that are not 'SunS'
    slowest_s = 0.0
    for base in BASE_ADDRESSES:
        started_s = time.monotonic()
        try:
            marker = await transport.read_holding(base, 2)
        except NotConnectedError as exc:
            _not_connected(cfg, report, exc)
            return False
        except ModbusExceptionResponse as exc:
            codes.add(exc.code)
            report.fact(f"base {base}", f"exception 0x{exc.code:02X} {exception_name(exc.code)}")
            continue
        except InverterLinkError as exc:
            silent += 1
            report.fact(f"base {base}", f"no answer ({exc})")
            continue
        slowest_s = max(slowest_s, time.monotonic() - started_s)
        if tuple(marker) == SUNS_MARKER:
            report.fact(f"base {base}", f"'SunS' found ({slowest_s:.3f} s)")
            _slow(cfg, report, slowest_s)
            return True
        values_seen += 1
        report.fact(f"base {base}", f"0x{marker[0]:04X} 0x{marker[1]:04X}, not 'SunS'")
    where = f"at {', '.join(str(b) for b in BASE_ADDRESSES)}"
    if silent == len(BASE_ADDRESSES):
        await _silence(cfg, report, BASE_ADDRESSES[0], 3)
    elif codes and not values_seen:
        _exception_problem(cfg, report, codes, where)
    else:
        report.problem(
            f"no SunSpec marker 'SunS' {where}",
            "that the device speaks SunSpec and its SunSpec/Modbus option is enabled; if not, "
            "use profile: register_map with the vendor's map (docs/inverter.md)",
            f"inverter.unit_id {cfg.unit_id}: another device may have answered",
        )
    return False


def _slow(cfg: InverterConfig, report: Report, took_s: float) -> None:
    if took_s > cfg.timeout_s * SLOW_FRACTION:
        report.note(
            f"warning: a reply took {took_s:.2f} s, over half of timeout_s {cfg.timeout_s:g}: "
            "raise inverter.timeout_s if requests time out"
        )


async def _probe_sunspec(cfg: InverterConfig, transport: ModbusTransport, report: Report) -> None:
    if not await _find_base(cfg, transport, report):
        return
    try:
        device = await SunSpecDevice.discover(transport)
    except (InverterLinkError, ProtocolError) as exc:
        report.problem(
            f"the SunSpec model chain cannot be walked: {exc}",
            "the inverter's firmware (a corrupt chain is a device bug: ask its maker)",
        )
        return
    report.fact("SunSpec base", str(device.base))
    for block in device.blocks:
        name = block.definition.name if block.definition else "no definition (vendor?), skipped"
        report.fact(f"model {block.model_id}", f"{name}, L={block.length} at {block.address}")
    if device.has(704):
        report.fact("power control", "SunSpec 700 series (704 DERCtlAC)")
    elif device.has(124):
        report.fact("power control", "SunSpec 100 series (124 storage_basic)")
    else:
        report.problem(
            f"no SunSpec power control model (704 or 124) in {device.model_ids}: the controller "
            "cannot command this device",
            "the inverter's SunSpec options (storage control is sometimes a licence), or use "
            "profile: register_map with the vendor's map",
        )
    try:
        await _show_sunspec(cfg, device, report)
    except (InverterLinkError, ProtocolError) as exc:
        report.problem(
            f"reading the models failed: {exc}",
            "run the probe again; if it repeats, the inverter's firmware",
        )


async def _show_sunspec(cfg: InverterConfig, device: SunSpecDevice, report: Report) -> None:
    wanted: dict[int, tuple[str, ...]] = {}
    for model_id, points in (*RATINGS, *MEASURED, *CONTROLS, (1, IDENTITY)):
        if device.has(model_id) and device.block(model_id).definition is not None:
            wanted[model_id] = (*wanted.get(model_id, ()), *points)
    ports = _ports(device)
    if ports:
        wanted[714] = (*wanted.get(714, ()), *ports)
    models = await device.read_models(
        {m: [p for p in pts if _defined(device, m, p)] for m, pts in wanted.items()}
    )
    report.heading("identity")
    if 1 in models:
        for name in IDENTITY:
            report.fact(name, _shown(models[1], name) or "-")
    for title, table in (("ratings", RATINGS), ("measured", MEASURED), ("controls", CONTROLS)):
        report.heading(title)
        for model_id, points in table:
            if model_id in models:
                extra = ports if model_id == 714 else ()
                _facts(report, model_id, models[model_id], (*points, *extra))
    report.heading("revert timer")
    _revert(cfg, models, report)
    await _daemon_view(cfg, device, report)


def _facts(report: Report, model_id: int, values: ModelValues, points: Iterable[str]) -> None:
    for name in points:
        text = _shown(values, name)
        if text is not None:
            report.fact(f"{model_id} {name}", text)


def _defined(device: SunSpecDevice, model_id: int, name: str) -> bool:
    definition = device.block(model_id).definition
    if definition is None:
        return False
    try:
        definition.point(name)
    except UnknownPointError:
        return False
    return True


def _ports(device: SunSpecDevice) -> tuple[str, ...]:
    """714's per-port points for the ports its L holds (at most MAX_PORTS_SHOWN)."""
    if not device.has(714):
        return ()
    block = device.block(714)
    if block.definition is None:
        return ()
    try:
        count = block.definition.repeats_in(block.length)
        return tuple(
            block.definition.repeat_name(index, point)
            for index in range(min(count, MAX_PORTS_SHOWN))
            for point in PORT_POINTS
        )
    except (GroupLayoutError, UnknownPointError):
        return ()


def _shown(values: ModelValues, name: str) -> str | None:
    """A point as a technician reads it; None when this model revision has no such point."""
    try:
        point = values.definition.point(name)
    except UnknownPointError:
        return None
    try:
        raw = values.raw(name)
        value = None if raw is None or isinstance(raw, str) else values.value(name)
    except ProtocolError as exc:
        return f"unreadable ({exc})"
    if isinstance(raw, str):
        text = raw or "(empty)"
    elif raw is None or value is None:
        text = "not implemented"
    elif point.reg_type in ENUMS:
        text = f"{point.symbols.get(int(raw), 'unnamed')} ({int(raw)})"
    elif point.reg_type in BITFIELDS:
        bits = [point.symbols.get(bit, f"bit {bit}") for bit in range(64) if int(raw) >> bit & 1]
        text = ", ".join(bits) or "none"
    else:
        text = f"{value:g} {point.units or ''}".rstrip()
    return text


def _revert(cfg: InverterConfig, models: dict[int, ModelValues], report: Report) -> None:
    wanted = f"the controller arms it with revert_timeout_s {cfg.revert_timeout_s:g} s at start"
    if 704 in models:
        ctl = models[704]
        enabled = _integer(ctl, "WSetEnaRvrt")
        seconds = _integer(ctl, "WSetRvrtTms")
        if enabled == 1 and seconds:
            remaining = _integer(ctl, "WSetRvrtRem")
            left = "" if remaining is None else f", {remaining} s left"
            report.note(
                f"armed: WSet returns to {_shown(ctl, 'WSetRvrt')} after {seconds} s without a "
                f"write{left}"
            )
        else:
            report.note(f"not armed (WSetEnaRvrt {enabled}, WSetRvrtTms {seconds}): {wanted}")
    elif 124 in models:
        seconds = _integer(models[124], "InOutWRte_RvrtTms")
        if seconds:
            report.note(f"armed: InWRte/OutWRte revert after {seconds} s without a write")
        else:
            report.note(f"not armed (InOutWRte_RvrtTms {seconds}): {wanted}")
    else:
        report.note("none: the device has neither 704 nor 124")


def _integer(values: ModelValues, name: str) -> int | None:
    try:
        return values.integer(name)
    except ProtocolError:
        return None


async def _daemon_view(cfg: InverterConfig, device: SunSpecDevice, report: Report) -> None:
    """The state and faults as the daemon's driver reads them (read-only: no setup)."""
    driver: SunSpec700Driver | SunSpec100Driver
    if device.has(704) and device.has(701):
        driver = SunSpec700Driver(device.transport, cfg.revert_timeout_s, device)
    elif device.has(124) and device.has(103):
        driver = SunSpec100Driver(device.transport, cfg.revert_timeout_s, device)
    else:
        return
    state = await driver.read(time.monotonic())
    _state(state.measured_power_w, state.enabled, state.faults, report)


def _watts(power_w: float | None) -> str:
    return "unknown" if power_w is None else f"{power_w + 0.0:g} W"  # + 0.0: never "-0 W"


def _state(power_w: float | None, enabled: bool, faults: Iterable[str], report: Report) -> None:
    report.heading("as the controller reads it")
    report.fact("power", f"{_watts(power_w)} (+ charges the vehicle)")
    report.fact("power stage", "enabled" if enabled else "disabled")
    faults = tuple(faults)
    report.fact("faults", ", ".join(faults) or "none")
    if faults:
        report.problem(
            f"the inverter reports a fault: {', '.join(faults)}",
            "the inverter's display or log for the cause; clear it there (the controller holds "
            "0 W while it lasts)",
        )


# -- vendor register map ---------------------------------------------------------------------


def _required(cfg: InverterConfig, register_map: RegisterMap | None) -> RegisterMap:
    if register_map is None:
        raise ValueError(f"profile register_map: the map {cfg.register_map} was not given")
    return register_map


async def _probe_map(
    cfg: InverterConfig, register_map: RegisterMap, transport: ModbusTransport, report: Report
) -> None:
    report.fact(
        "register map",
        f"{register_map.manufacturer} {register_map.model}, {len(register_map.registers)} "
        f"registers ({cfg.register_map})",
    )
    values = await _read_map(cfg, transport, register_map, report)
    if values is None:
        return
    report.heading("registers")
    for name, register in register_map.registers.items():
        function = "input" if register.function == "input" else "holding"
        text = values.get(name, "unreadable")
        report.fact(name, f"{text} ({function} {register.address})")
    heartbeat = register_map.roles.heartbeat
    report.heading("revert timer")
    if heartbeat.kind == "timeout":
        held = values.get(heartbeat.register_name, "unreadable")
        report.note(
            f"{heartbeat.register_name} = {held}; the controller arms it with revert_timeout_s "
            f"{cfg.revert_timeout_s:g} s at start, 0 or another value means not armed by it"
        )
    else:
        report.note(
            f"counter heartbeat in {heartbeat.register_name}: the device's own timeout applies"
        )
    driver = RegisterMapDriver(transport, register_map, cfg.revert_timeout_s)
    try:
        state = await driver.read(time.monotonic())
    except (InverterLinkError, ProtocolError) as exc:
        report.problem(
            f"the driver's reading failed: {exc}", "the register map against the inverter's manual"
        )
        return
    _state(state.measured_power_w, state.enabled, state.faults, report)


async def _read_map(
    cfg: InverterConfig, transport: ModbusTransport, register_map: RegisterMap, report: Report
) -> dict[str, str] | None:
    """Every register of the map as text; None (with the problem) when the device is not there.

    Read in the driver's batches; a batch refused with an exception is read register by
    register, so the problem names the registers the device does not have."""
    shown: dict[str, str] = {}
    refused: dict[str, int] = {}
    for function, start, count, names in batches(register_map, register_map.registers):
        try:
            registers = await transport.read_registers(start, count, function=function)
        except NotConnectedError as exc:
            _not_connected(cfg, report, exc)
            return None
        except ModbusExceptionResponse:
            for name in names:
                register = register_map.registers[name]
                try:
                    one = await transport.read_registers(
                        register.address, register.words, function=function
                    )
                except ModbusExceptionResponse as exc:
                    refused[name] = exc.code
                    continue
                shown[name] = _map_value(register_map, name, one, register.address)
            continue
        except InverterLinkError:
            await _silence(cfg, report, start, function)
            return None
        for name in names:
            shown[name] = _map_value(register_map, name, registers, start)
    if refused:
        codes = set(refused.values())
        where = f"for {', '.join(refused)}"
        if len(refused) == len(register_map.registers):
            _exception_problem(cfg, report, codes, where)
            return None
        report.problem(
            f"the inverter refuses {len(refused)} of the map's registers: "
            + ", ".join(f"{n} (0x{c:02X} {exception_name(c)})" for n, c in refused.items()),
            "the register map against the manual of this model and firmware (addresses are "
            "0-based: a manual's 40001 is address 0)",
        )
    return shown


def _map_value(register_map: RegisterMap, name: str, registers: list[int], start: int) -> str:
    register = register_map.registers[name]
    offset = register.address - start
    order = WordOrder(register.word_order or register_map.word_order)
    raw = decode(registers[offset : offset + register.words], MAP_TYPES[register.type], order)
    if not isinstance(raw, int | float):
        return f"not a number ({raw!r})"
    return f"{float(raw) * register.scale:g} {register.unit or ''}".rstrip()


# -- write test ------------------------------------------------------------------------------


def build_driver(
    cfg: InverterConfig, transport: ModbusTransport, register_map: RegisterMap | None = None
) -> InverterDriver:
    """The driver the daemon would use for this config (and its register map)."""
    if cfg.profile == "register_map":
        return RegisterMapDriver(transport, _required(cfg, register_map), cfg.revert_timeout_s)
    return SunSpecDriver(transport, cfg.revert_timeout_s)


def describe_write_test(cfg: InverterConfig, test: WriteTest) -> str:
    direction = "charging the vehicle" if test.power_w > 0 else "discharging the vehicle"
    if test.power_w == 0:
        direction = "the stage enabled at 0 W"
    return (
        f"The write test commands {test.power_w:g} W ({direction}) for {test.duration_s:g} s on "
        f"{transport_of(cfg).describe()}, then 0 W with the stage disabled. The daemon must not "
        "be running (systemctl stop v2g-controller): two writers would fight. A vehicle must be "
        "connected and ready for any power to flow."
    )


async def write_test(
    cfg: InverterConfig,
    test: WriteTest,
    report: Report,
    *,
    register_map: RegisterMap | None = None,
    driver_factory: Callable[[ModbusTransport], InverterDriver] | None = None,
) -> None:
    """Command ``test.power_w`` for ``test.duration_s``, then 0 W with the stage disabled, also
    when cancelled or after an error; when the 0 W cannot be written within ``END_TIMEOUT_S``
    it is reported as a problem (see the module docstring). Cancellation is re-raised after."""
    transport = transport_of(cfg)
    driver = (
        build_driver(cfg, transport, register_map)
        if driver_factory is None
        else driver_factory(transport)
    )
    heartbeat_s = min(HEARTBEAT_MAX_S, cfg.revert_timeout_s / 3)
    report.heading(f"write test: {test.power_w:g} W for {test.duration_s:g} s")
    try:
        await driver.setup()  # arms the revert timer and writes 0 W, verified
        report.note(
            f"set up: revert timer armed ({cfg.revert_timeout_s:g} s), 0 W written and read back"
        )
        started_s = time.monotonic()
        while (elapsed_s := time.monotonic() - started_s) < test.duration_s:
            await driver.command(test.power_w, enable=True)
            state = await driver.read(time.monotonic())
            measured = state.measured_power_w
            report.note(
                f"{elapsed_s:5.1f} s  commanded {test.power_w:g} W  measured {_watts(measured)}"
            )
            left_s = test.duration_s - (time.monotonic() - started_s)
            await asyncio.sleep(max(0.0, min(heartbeat_s, left_s)))
    except (InverterLinkError, ProtocolError) as exc:
        report.problem(
            f"write test stopped: {exc}",
            "the inverter's display or log; the readings above show how far it got",
        )
    except asyncio.CancelledError:
        report.note("write test interrupted")
        raise
    finally:
        await _end_at_zero(cfg, driver, transport, report)


async def _settled(driver: InverterDriver) -> float | None:
    """The measured power once it is down to ``SETTLED_W`` (the stage ramps), or after
    ``SETTLE_READS`` readings."""
    measured: float | None = None
    for attempt in range(SETTLE_READS):
        if attempt:
            await asyncio.sleep(SETTLE_INTERVAL_S)
        measured = (await driver.read(time.monotonic())).measured_power_w
        if measured is not None and abs(measured) <= SETTLED_W:
            break
    return measured


async def _end_at_zero(
    cfg: InverterConfig, driver: InverterDriver, transport: ModbusTransport, report: Report
) -> None:
    """The final 0 W, in a task of its own that a further cancellation (a second Ctrl-C or
    SIGTERM, or whoever cancels the caller again) does not stop: it is waited for, at most
    ``END_TIMEOUT_S`` more, before the cancellation goes on."""
    ending = asyncio.create_task(_command_zero(cfg, driver, report), name="probe-end-at-0-w")
    try:
        await asyncio.shield(ending)
    except asyncio.CancelledError:
        deadline_s = time.monotonic() + END_TIMEOUT_S
        while not ending.done() and (left_s := deadline_s - time.monotonic()) > 0:
            try:
                await asyncio.wait({ending}, timeout=left_s)
            except asyncio.CancelledError:
                continue  # re-raised below, once the 0 W is done or its time is up
        raise
    finally:
        await transport.close()


async def _command_zero(cfg: InverterConfig, driver: InverterDriver, report: Report) -> None:
    """0 W with the stage disabled, tried again on a link error (a reconnect in its backoff
    fails at once) until it is written or ``END_TIMEOUT_S`` is up; then the settled reading."""
    link_error: InverterLinkError | None = None
    commanded = False
    try:
        async with asyncio.timeout(END_TIMEOUT_S):
            while True:
                try:
                    await driver.command(0.0, enable=False)
                    break
                except InverterLinkError as exc:
                    link_error = exc
                    await asyncio.sleep(END_RETRY_S)
            commanded = True
            measured = await _settled(driver)
        report.note(f"ended: 0 W commanded, stage disabled, measured {_watts(measured)}")
    except (InverterLinkError, ProtocolError, TimeoutError) as exc:
        if commanded:
            report.problem(
                f"0 W commanded and the stage disabled, but reading the power back failed: "
                f"{exc if str(exc) else f'no answer within {END_TIMEOUT_S:g} s'}",
                "the inverter's display: it should show 0 W",
            )
            return
        reason = exc if str(exc) else (link_error or f"no answer within {END_TIMEOUT_S:g} s")
        report.problem(
            f"could not command 0 W: the inverter's revert timer ({cfg.revert_timeout_s:g} s) "
            f"is what ends power now ({reason})",
            "the inverter's display: it returns to 0 W when that timer runs out (armed by the "
            "setup, if the setup got that far); switch the inverter off if it does not",
        )
