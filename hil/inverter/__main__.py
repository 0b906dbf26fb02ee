"""Run the simulated inverter on its own, so a technician can try a config without hardware.

    python -m hil.inverter --tcp 127.0.0.1:5020 --profile sunspec-700
    python -m hil.inverter --serial /dev/ttyUSB1 --baudrate 9600 --profile sunspec-100
    python -m hil.inverter --tcp 0.0.0.0:502 --profile config/inverters/v2glabs-bd7.yaml
    python -m hil.inverter --tcp 127.0.0.1:5020 --profile sunspec-100 --field-chain --base 0 \
        --silent-at-40000 --reply-delay-s 0.6 --max-connections 1 --busy-probability 0.05

Prints the power stage once a second; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

from controller.errors import ConfigError
from hil.inverter.field import add_field_arguments, behaviour_from_args, build_simulator
from hil.inverter.stage import PowerStage, StageRatings


async def _serve(args: argparse.Namespace) -> None:
    stage = PowerStage(
        StageRatings(max_charge_w=args.max_charge_w, max_discharge_w=args.max_discharge_w)
    )
    sim = build_simulator(args.profile, stage, behaviour_from_args(args), unit_id=args.unit_id)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        bound = await sim.start_tcp(host or "127.0.0.1", int(port))
        where = f"tcp {host or '127.0.0.1'}:{bound}"
    else:
        await sim.start_serial(args.serial, baudrate=args.baudrate, parity=args.parity)
        where = f"rtu {args.serial} {args.baudrate} baud"
    sys.stdout.write(f"simulated inverter ({sim.profile.name}) on {where}, unit {args.unit_id}\n")
    try:
        while True:
            await asyncio.sleep(1.0)
            s = stage
            sys.stdout.write(
                f"target {s.target_w:8.0f} W  actual {s.actual_w:8.0f} W  "
                f"enabled {s.enabled!s:5}  charged {s.energy_charged_wh:8.1f} Wh  "
                f"discharged {s.energy_discharged_wh:8.1f} Wh  "
                f"revert in {s.revert_remaining_s(time.monotonic()):4.0f} s"
                f"{'  FAULT ' + s.fault if s.fault else ''}\n"
            )
            sys.stdout.flush()
    finally:
        await sim.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.inverter", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT")
    where.add_argument("--serial", metavar="DEVICE")
    parser.add_argument(
        "--profile",
        default="sunspec-700",
        help="sunspec-700, sunspec-100, a map name in config/inverters/, or a map file",
    )
    parser.add_argument("--unit-id", type=int, default=1)
    parser.add_argument("--baudrate", type=int, default=9600)
    parser.add_argument("--parity", choices=["N", "E", "O"], default="N")
    parser.add_argument("--max-charge-w", type=float, default=7400.0)
    parser.add_argument("--max-discharge-w", type=float, default=7400.0)
    add_field_arguments(parser)
    args = parser.parse_args()
    if problems := behaviour_from_args(args).problems(args.profile):
        parser.error("; ".join(problems))
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args))
    except ConfigError as error:
        sys.stderr.write(f"{error}\n")
        return 2
    except (OSError, RuntimeError) as error:
        sys.stderr.write(f"cannot start the simulator: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
