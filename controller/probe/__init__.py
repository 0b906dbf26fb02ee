"""Commissioning probes: ``v2g-controller probe inverter | vehicle | broker -c CONFIG``.

Each probe reads the config as the daemon does, talks to one thing as the daemon would, and
prints what it found for a technician. Exit status: 0 all well, 1 a problem found (each printed
as ``PROBLEM:`` with what to check), 2 a bad config or command line (nothing probed).

``add_probe_parser`` adds the subcommands to the CLI's parser; ``run_probe`` runs the one chosen.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

from controller.config import Config, RegisterMap
from controller.probe.report import OK, PROBLEM, USAGE, Report
from controller.statusd import StatusClientError, default_socket_path
from controller.statusd import ask as ask_daemon

MAX_WRITE_TEST_S = 600.0
MAX_WRITE_TEST_W = 400_000.0  # the config's bound for any power
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DAEMON_CHECK_TIMEOUT_S = 2.0  # the daemon answers its status socket within one cycle

_FORMAT = argparse.RawDescriptionHelpFormatter

PROBE_DESCRIPTION = """\
Commissioning probes: check the inverter, the vehicle's CAN bus and the aggregator's broker
one at a time, with the settings of a config file, without starting the controller.

Each prints what it found in short lines; every problem starts with PROBLEM: and is followed
by what to check. Exit status: 0 all well, 1 a problem was found, 2 the config file or the
command line is wrong (nothing was probed)."""

INVERTER_DESCRIPTION = """\
Connects to the inverter as the config says (Modbus TCP or RTU, unit id, timeout, retries),
looks for the SunSpec marker at 40000, 0 and 50000, walks the model chain and prints the models
found, the identity, ratings, measured values, the revert timer and any fault, as the
controller's driver reads them. With profile: register_map, every register of the vendor map is
read and shown instead.

Read-only, unless --write-test is given: then, after confirmation, the controller's own driver
sets the inverter up (revert timer armed, 0 W), commands POWER_W for SECONDS (re-sent every
second) and then commands 0 W with the power stage disabled: also on Ctrl-C, SIGTERM (a second
one does not cut it short) and errors, tried again for up to 10 s while the link is down. If
that 0 W cannot be written it says so, and the inverter's revert timer is what ends the power.
It refuses while the daemon answers on its status socket: two writers would fight over the
setpoint.

Problems it names: nothing listening or the serial port missing; a wrong unit id (no answer,
a gateway's exception 0x0A/0x0B, 0x04 from some devices, 0x02 illegal address); a timeout_s
too short (the inverter answers, but later); no SunSpec marker at any base address; no power
control model; faults the inverter reports."""

INVERTER_EPILOG = """\
examples:
  v2g-controller probe inverter -c /etc/v2g-controller/config.yaml
  v2g-controller probe inverter -c config.yaml --write-test 2000 --for 10
  v2g-controller probe inverter -c config.yaml --write-test -3000 --for 5 --yes

POWER_W follows the controller's sign: + charges the vehicle, - discharges it."""

VEHICLE_DESCRIPTION = """\
Listens on the configured CAN interface (vehicle.can) and decodes every frame with the
project's DBC for vehicle.protocol (chademo.dbc, gbt27930.dbc, or the BMS profile's DBC): one
line per message kind with who sent it (car or charger), how many, how often and the last
values. On a terminal the lines update in place; piped, a line is added when a kind first
appears or changes, and a summary ends the run.

Passive: it never sends a frame. A CHAdeMO car talks once the charger's d1 line is on; a GB/T
car answers only a charger's CHM/CRM, so run it alongside the daemon to see the car's side.
For a socketcan interface shared with the daemon, both receive every frame."""

VEHICLE_EPILOG = """\
examples:
  v2g-controller probe vehicle -c /etc/v2g-controller/config.yaml
  v2g-controller probe vehicle -c config.yaml --seconds 10 > can-log.txt

Stop it with Ctrl-C (or --seconds). It reports a problem when nothing was received, when
nothing received belongs to the protocol, and on CAN error frames."""

BROKER_DESCRIPTION = """\
Connects to the aggregator's broker with the configured TLS files and login, and subscribes to
the setpoint topic, step by step: DNS, TCP, TLS (the broker's certificate shown: subject, names,
issuer, validity, whether the host name matches), the MQTT login (the CONNACK's reason) and the
subscription (the SUBACK, and its round trip). The first step that fails is named with what to
check. Every failover address is probed in turn.

It uses its own client id (the configured one with -probe) and no Last Will, so a running daemon
keeps its connection and the aggregator sees nothing but a short visit."""

BROKER_EPILOG = """\
examples:
  v2g-controller probe broker -c /etc/v2g-controller/config.yaml

Typical findings: connection refused (broker.port, the broker not running), certificate not
trusted (tls.ca_file), expired (the broker's operator, or the charger's clock), not for this
host name (broker.host), login refused (username, password_file)."""


def _power(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a power in W") from None
    if not math.isfinite(value) or abs(value) > MAX_WRITE_TEST_W:
        raise argparse.ArgumentTypeError(
            f"expected a power within +-{MAX_WRITE_TEST_W:g} W, found {text}"
        )
    return value


def _seconds(limit: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or not 0 < value <= limit:
            raise argparse.ArgumentTypeError(
                f"expected seconds above 0 and at most {limit:g}, found {text}"
            )
        return value

    return parse


def add_probe_parser(commands: Any) -> None:
    """Adds ``probe inverter|vehicle|broker`` to the CLI's subcommands (``add_subparsers``)."""
    probe = commands.add_parser(
        "probe",
        help="commissioning probes: inverter, vehicle (CAN), broker",
        description=PROBE_DESCRIPTION,
        formatter_class=_FORMAT,
        epilog="see v2g-controller probe inverter|vehicle|broker --help",
    )
    kinds = probe.add_subparsers(dest="probe", required=True, metavar="WHAT")

    def target(name: str, summary: str, description: str, epilog: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = kinds.add_parser(
            name, help=summary, description=description, epilog=epilog, formatter_class=_FORMAT
        )
        parser.add_argument(
            "-c",
            "--config",
            required=True,
            metavar="FILE",
            help="config YAML (e.g. /etc/v2g-controller/config.yaml)",
        )
        return parser

    inverter = target(
        "inverter",
        "does the inverter answer; its models, ratings, values, revert timer, faults",
        INVERTER_DESCRIPTION,
        INVERTER_EPILOG,
    )
    inverter.add_argument(
        "--write-test",
        type=_power,
        metavar="POWER_W",
        help="command this power (+ charges the vehicle) after confirmation, then 0 W",
    )
    inverter.add_argument(
        "--for",
        dest="for_s",
        type=_seconds(MAX_WRITE_TEST_S),
        metavar="SECONDS",
        help=f"how long the write test holds POWER_W (at most {MAX_WRITE_TEST_S:g})",
    )
    inverter.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (for scripts)"
    )
    vehicle = target(
        "vehicle",
        "listen to the car on the CAN bus and decode it (sends nothing)",
        VEHICLE_DESCRIPTION,
        VEHICLE_EPILOG,
    )
    vehicle.add_argument(
        "--seconds",
        type=_seconds(86_400.0),
        metavar="N",
        help="stop after N seconds (default: until Ctrl-C)",
    )
    target(
        "broker",
        "connect to the aggregator's broker: DNS, TCP, TLS, login, subscription",
        BROKER_DESCRIPTION,
        BROKER_EPILOG,
    )


def ask(prompt: str, stdin: TextIO | None = None, out: TextIO | None = None) -> bool:
    """y/N on stdin; anything but y or yes (or end of input) is no."""
    stream = out if out is not None else sys.stdout
    stream.write(f"{prompt} [y/N] ")
    stream.flush()
    answer = (stdin if stdin is not None else sys.stdin).readline()
    return answer.strip().lower() in ("y", "yes")


def run_probe(
    args: argparse.Namespace,
    config: Config,
    *,
    register_map: RegisterMap | None = None,
    out: TextIO | None = None,
    confirm: Callable[[str], bool] | None = None,
) -> int:
    """Runs the chosen probe on ``config`` (and the vendor map it names, profile register_map;
    the CLI reads both); returns the exit status."""
    report = Report(out)
    if args.probe == "inverter" and (args.write_test is None) != (args.for_s is None):
        sys.stderr.write("probe inverter: --write-test POWER_W and --for SECONDS go together\n")
        return USAGE
    try:
        if args.probe == "inverter":
            return _inverter(
                config,
                register_map,
                args,
                report,
                confirm or (lambda prompt: ask(prompt, out=report.out)),
            )
        if args.probe == "vehicle":
            # Imported here: the other probes need no CAN libraries.
            from controller.probe.vehicle import probe_vehicle  # noqa: PLC0415

            live = report.out.isatty()
            return _run(
                probe_vehicle(config.vehicle, report, seconds=args.seconds, live=live),
                report,
                interrupted_ok=True,
            )
        from controller.probe.broker import probe_broker  # noqa: PLC0415

        return _run(probe_broker(config, report), report)
    except BrokenPipeError:
        return report.exit_code


def _run(
    coroutine: Coroutine[Any, Any, object], report: Report, *, interrupted_ok: bool = False
) -> int:
    """Runs a probe; Ctrl-C and SIGTERM cancel it once (its finally blocks run: the write
    test's final 0 W); a second signal changes nothing, so it cannot cut that short."""

    async def main() -> None:
        task = asyncio.current_task()
        if task is None:  # never: asyncio.run runs main() in a task
            raise RuntimeError("the probe is not running in a task")
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if not task.cancelling():
                task.cancel()

        # Our handler replaces asyncio.Runner's SIGINT one, which on a second Ctrl-C raises
        # KeyboardInterrupt and cancels every task left.
        for number in STOP_SIGNALS:
            loop.add_signal_handler(number, stop)
        try:
            await coroutine
        finally:
            for number in STOP_SIGNALS:
                loop.remove_signal_handler(number)

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        if not interrupted_ok:
            report.heading("interrupted")
            return PROBLEM
    return report.exit_code


def _daemon_check(config: Config) -> str | None:
    """Why the write test must not start because of the daemon, or None: a daemon answers on
    the status socket, or the socket is there but this user may not open it (then nobody can
    tell). No socket, a stale one or no answer: None."""
    path = (
        Path(config.status.socket_path)
        if config.status.socket_path is not None
        else default_socket_path(os.environ)
    )
    try:
        ask_daemon(path, "status", timeout_s=DAEMON_CHECK_TIMEOUT_S)
    except StatusClientError as exc:
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            return f"cannot tell whether the daemon is running: {exc}"
        return None
    # Any answer, even an error, is a daemon.
    return (
        f"the daemon is running (it answers on {path}): stop it first: sudo systemctl stop "
        "v2g-controller"
    )


def _inverter(
    config: Config,
    register_map: RegisterMap | None,
    args: argparse.Namespace,
    report: Report,
    confirm: Callable[[str], bool],
) -> int:
    from controller.probe.inverter import (  # noqa: PLC0415
        WriteTest,
        describe_write_test,
        probe_inverter,
        write_test,
    )

    status = _run(probe_inverter(config.inverter, report, register_map=register_map), report)
    if args.write_test is None:
        return status
    if status != OK:
        report.heading("write test not run: the checks above found problems")
        return status
    refused = _daemon_check(config)
    if refused is not None:
        report.problem(refused, "nothing was written: two writers would fight over the setpoint")
        return PROBLEM
    test = WriteTest(args.write_test, args.for_s)
    text = describe_write_test(config.inverter, test)
    report.heading(text)
    try:
        confirmed = args.yes or confirm("Start the write test?")
    except (KeyboardInterrupt, EOFError):
        confirmed = False
    if not confirmed:
        report.heading("write test not confirmed: nothing was written")
        return PROBLEM
    return _run(write_test(config.inverter, test, report, register_map=register_map), report)
