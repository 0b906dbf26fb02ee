"""Command line: ``v2g-controller run | check-config | schema | ledger``.

Exit codes: 0 success, 1 a runtime failure (power was driven to 0 W first), 2 the config or the
command line is wrong (nothing was started), 3 forced exit on a second stop signal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence

from controller import __version__
from controller.config import json_schema, load_config
from controller.daemon import ExitCode
from controller.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="v2g-controller",
        description="Controller for a bidirectional EV charger (V2G/V2H).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the controller daemon")
    run.add_argument(
        "-c",
        "--config",
        required=True,
        metavar="FILE",
        help="config YAML (e.g. /etc/v2g-controller/config.yaml)",
    )

    check = commands.add_parser("check-config", help="validate a config file and report problems")
    check.add_argument("file", metavar="FILE")

    commands.add_parser("schema", help="print the config's JSON Schema (for editors)")

    ledger = commands.add_parser(
        "ledger", help="print the energy ledger: sessions, daily totals, earnings (read-only)"
    )
    source = ledger.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", metavar="FILE", help="the ledger at ledger.path")
    source.add_argument("--db", metavar="PATH", help="a ledger file (e.g. a copy)")
    ledger.add_argument("--json", action="store_true", help="JSON instead of tables")
    ledger.add_argument("--from", dest="since", type=_date, metavar="DATE", help="YYYY-MM-DD")
    ledger.add_argument("--to", dest="until", type=_date, metavar="DATE", help="YYYY-MM-DD")
    return parser


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _report(error: ConfigError) -> None:
    for problem in error.problems:
        print(problem, file=sys.stderr)
    count = len(error.problems)
    print(f"{count} problem{'s' if count != 1 else ''} found", file=sys.stderr)


def _ledger(args: argparse.Namespace) -> int:
    # Imported here: the other commands need no database code.
    from controller.ledger.db import LedgerError, open_database  # noqa: PLC0415
    from controller.ledger.report import format_report, read_report  # noqa: PLC0415

    if args.since and args.until and args.since > args.until:
        print(f"ledger: --from {args.since} is after --to {args.until}", file=sys.stderr)
        return ExitCode.CONFIG
    path = args.db
    if path is None:
        try:
            path = load_config(args.config).ledger.path
        except ConfigError as error:
            _report(error)
            return ExitCode.CONFIG
    try:
        conn = open_database(path, readonly=True)
        try:
            report = read_report(conn, args.since, args.until)
        finally:
            conn.close()
    except LedgerError as exc:
        message = str(exc)
        print(
            message if message.startswith("ledger") else f"ledger {path}: {message}",
            file=sys.stderr,
        )
        return ExitCode.FAILURE
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(format_report(report))
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "ledger":
        return _ledger(args)
    if args.command == "schema":
        print(json.dumps(json_schema(), indent=2))
        return ExitCode.OK
    if args.command == "check-config":
        try:
            load_config(args.file)
        except ConfigError as error:
            _report(error)
            return ExitCode.CONFIG
        print(f"{args.file}: OK")
        return ExitCode.OK

    try:
        config = load_config(args.config)
    except ConfigError as error:
        _report(error)
        return ExitCode.CONFIG

    # Imported here so that check-config and schema stay quick and need no link libraries.
    from controller.app import run  # noqa: PLC0415
    from controller.logs import configure_logging  # noqa: PLC0415

    configure_logging(config.logging.level, config.logging.format)
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
