"""Commission a charger without a car: ``python -m hil.vehicle --protocol chademo ...``.

Plays the vehicle's side of CHAdeMO or GB/T 27930 on a python-can bus until Ctrl-C (or for
``--duration-s``), logging the simulated car's state once a second.

Without ``--lines`` the car assumes the charger's digital lines (it wakes at once, and for CHAdeMO
takes d2 as on 1.5 s after the charger reports its connector locked). With ``--lines PATH`` it
plugs into the simulated charger board shared through that file (the daemon's
``vehicle.lines: {kind: simulated, path: PATH}``): it reads d1, d2 and the contactors there, pulls
k, and unplugs when it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

import can

from controller.errors import VehicleLinkError
from controller.vehicle.canbus import only_own_group
from controller.vehicle.lines import SharedFileLines
from hil.vehicle.battery import BatteryModel
from hil.vehicle.chademo_ev import ChademoVehicle, ChademoVehicleConfig
from hil.vehicle.faults import FaultInjection
from hil.vehicle.gbt_ev import GbtVehicle, GbtVehicleConfig
from hil.vehicle.runner import VehicleSimulator

log = logging.getLogger("hil.vehicle")

FAULT_FLAGS = (
    "stop_request",
    "over_temperature",
    "silence",
    "silence_demand",
    "garbage",
    "wrong_dlc",
    "open_contactor",
    "not_in_park",
    "charging_forbidden",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m hil.vehicle", description=__doc__)
    parser.add_argument("--protocol", choices=("chademo", "gbt27930"), required=True)
    parser.add_argument(
        "--interface", choices=("socketcan", "udp_multicast", "virtual"), required=True
    )
    parser.add_argument("--channel", required=True, help="can0, vcan0, a multicast group, ...")
    parser.add_argument("--soc", type=float, default=45.0, help="initial SoC, %% (default 45)")
    parser.add_argument("--mode", choices=("charge", "discharge"), default="charge")
    parser.add_argument("--target-soc", type=float, default=80.0, help="stop charging here, %%")
    parser.add_argument("--capacity-kwh", type=float, default=40.0)
    parser.add_argument("--duration-s", type=float, default=None, help="stop after this long")
    parser.add_argument(
        "--lines",
        metavar="PATH",
        default=None,
        help="the simulated charger board's lines file (vehicle.lines.path in the daemon's config)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=FAULT_FLAGS,
        help="inject a fault from the start (repeatable)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.soc <= 100 or not 0 <= args.target_soc <= 100:
        parser.error("--soc and --target-soc are percentages, 0..100")
    if args.capacity_kwh <= 0:
        parser.error("--capacity-kwh must be positive")
    return args


def build_vehicle(
    args: argparse.Namespace, lines: SharedFileLines | None = None
) -> ChademoVehicle | GbtVehicle:
    """The simulated car the arguments describe, plugged into ``lines`` when given."""
    battery = BatteryModel(capacity_kwh=args.capacity_kwh, soc_pct=args.soc)
    chosen = set(args.fault)
    faults = FaultInjection()
    for name in chosen:
        setattr(faults, name, True)  # FAULT_FLAGS are FaultInjection's boolean fields
    if args.protocol == "chademo":
        return ChademoVehicle(
            battery,
            faults,
            config=ChademoVehicleConfig(mode=args.mode, target_soc_pct=args.target_soc),
            lines=lines,
        )
    return GbtVehicle(
        battery,
        faults,
        config=GbtVehicleConfig(mode=args.mode, target_soc_pct=args.target_soc),
        lines=lines,
    )


async def _report(simulator: VehicleSimulator) -> None:
    while True:
        await asyncio.sleep(1.0)
        log.info("%r", simulator)


async def run(args: argparse.Namespace) -> None:
    """Open the bus and play the vehicle; SIGTERM stops it as cleanly as Ctrl-C."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    lines: SharedFileLines | None = None
    if args.lines is not None:
        lines = SharedFileLines(args.lines, side="vehicle")
        lines.open()
        lines.plugged = True
        # The site's insulation monitor (its OK relay is a board input like the E-stop): this
        # standalone car models a healthy installation; hil.plant models the IMD itself.
        lines.insulation_ok = True
        log.info("plugged into the simulated charger board at %s", args.lines)
    try:
        await _play(args, lines)
    finally:
        if lines is not None:
            lines.close()  # the car leaves: k released, connector unplugged


async def _play(args: argparse.Namespace, lines: SharedFileLines | None) -> None:
    try:
        bus = can.Bus(interface=args.interface, channel=args.channel)
        if args.interface == "udp_multicast":
            only_own_group(bus)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        raise VehicleLinkError(f"cannot open {args.interface}:{args.channel}: {exc}") from None
    simulator = VehicleSimulator(build_vehicle(args, lines), bus)
    reporter = asyncio.create_task(_report(simulator))
    try:
        async with asyncio.timeout(args.duration_s):  # None: until Ctrl-C
            await simulator.run()
    except TimeoutError:
        log.info("--duration-s reached")
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        bus.shutdown()
        log.info("final: %r", simulator)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 0 on a clean stop, 1 when the bus failed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM
        return 0
    except VehicleLinkError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
