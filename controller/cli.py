"""Command line: ``v2g-controller run | check-config | schema | ledger | reset-faults | status |
reset | probe``.

Exit codes: 0 success, 1 a runtime failure (power was driven to 0 W first), 2 the config or the
command line is wrong (nothing was started), 3 forced exit on a second stop signal. ``status``
and ``reset`` exit 1 when the daemon cannot be asked (not running, no permission) or refuses
the request; ``reset`` also when the daemon refused the reset because a cause is present.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from controller import __version__
from controller.config import json_schema, load_config, load_register_map
from controller.daemon import ExitCode
from controller.errors import ConfigError
from controller.probe import add_probe_parser, run_probe
from controller.statusd import StatusClientError, ask, default_socket_path, format_status


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
        "ledger",
        help="print the energy ledger: sessions with their receipts, daily totals, earnings "
        "(read-only)",
    )
    source = ledger.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", metavar="FILE", help="the ledger at ledger.path")
    source.add_argument("--db", metavar="PATH", help="a ledger file (e.g. a copy)")
    ledger.add_argument("--json", action="store_true", help="JSON instead of tables")
    ledger.add_argument("--from", dest="since", type=_date, metavar="DATE", help="YYYY-MM-DD")
    ledger.add_argument("--to", dest="until", type=_date, metavar="DATE", help="YYYY-MM-DD")

    reset = commands.add_parser(
        "reset-faults",
        help="ask the running daemon for a manual fault reset (E-stop, manual-reset faults)",
        description="Sends SIGUSR1 to the running daemon. The daemon accepts the reset only "
        "when every cause is gone; its log says whether it did.",
    )
    reset.add_argument(
        "--pid",
        type=_pid,
        metavar="N",
        help=f"the daemon's process id (default: the MainPID systemd reports for {SERVICE})",
    )

    # -- status and reset: the daemon's local status socket (controller/statusd.py) --
    socket_help = (
        f"the daemon's status socket (default: {default_socket_path(os.environ)}; "
        "status.socket_path in the config)"
    )
    status = commands.add_parser(
        "status",
        help="the running daemon's live state: power, links, limits, latched faults (read-only)",
        description="Asks the running daemon over its local status socket (mode 0660: the "
        "service's user and group may read it) what it is doing and why: state, source, power, "
        "SoC, each link with why it is down, the limits in force and the one that binds, the "
        "latched faults and how to reset them.",
    )
    status.add_argument("--json", action="store_true", help="the daemon's JSON answer")
    status.add_argument("--socket", type=Path, metavar="PATH", help=socket_help)
    reset_now = commands.add_parser(
        "reset",
        help="the deliberate fault reset, answered by the daemon: accepted, or refused and why",
        description="Asks the running daemon over its status socket for a manual fault reset "
        "(E-stop, manual-reset faults) and prints its answer. The daemon refuses while a cause "
        "is present (the E-stop still pressed, the fault still there); exit status 1 then. "
        "After an E-stop, power resumes only on a new start.",
    )
    reset_now.add_argument("--socket", type=Path, metavar="PATH", help=socket_help)
    add_probe_parser(commands)  # probe inverter | vehicle | broker (controller/probe/)
    return parser


SERVICE = "v2g-controller.service"
SYSTEMCTL_TIMEOUT_S = 10.0


class _ResetError(Exception):
    """Why no reset was sent, as the technician reads it."""


def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a process id") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"expected a process id above 0, found {pid}")
    return pid


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
    from controller.ledger.report import format_report, read_report  # noqa: PLC0415
    from controller.storage.db import LedgerError, open_database  # noqa: PLC0415

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


def _service_main_pid() -> int:
    """The daemon's PID as systemd knows it."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise _ResetError(
            "systemctl not found: without systemd, give the daemon's process id with --pid N"
        )
    command = [systemctl, "show", "-p", "MainPID", "--value", SERVICE]
    try:
        result = subprocess.run(  # noqa: S603  a fixed command line, no shell
            command, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _ResetError(f"{' '.join(command)} failed: {exc}") from None
    if result.returncode != 0:
        why = result.stderr.strip().splitlines()
        raise _ResetError(
            f"{' '.join(command)} failed ({why[0] if why else f'exit {result.returncode}'}); "
            "give the daemon's process id with --pid N"
        )
    text = result.stdout.strip()
    if not text.isdigit():
        raise _ResetError(f"systemctl reported MainPID {text!r} for {SERVICE}, not a process id")
    pid = int(text)
    if pid == 0:
        raise _ResetError(
            f"{SERVICE} is not running (systemd reports no main process): nothing to reset. "
            f"Start it (systemctl start {SERVICE}) or give the daemon's process id with --pid N"
        )
    return pid


def _is_daemon(argv: list[str]) -> bool:
    """The command line of ``v2g-controller run`` (installed) or ``python -m controller run``."""
    for i, arg in enumerate(argv):
        module = arg == "controller" and argv[i - 1 : i] == ["-m"]
        if module or Path(arg).name == "v2g-controller":
            return "run" in argv[i + 1 :]
    return False


def _check_is_daemon(pid: int) -> None:
    # SIGUSR1 ends a process that does not handle it: a mistyped --pid must not kill another
    # program, so the target must be the daemon. Without /proc (not Linux) nothing can be checked.
    if not Path("/proc/self/cmdline").exists():
        return
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        raise _ResetError(f"no process {pid}: is the daemon running?") from None
    except OSError as exc:
        raise _ResetError(f"cannot check that process {pid} is the daemon: {exc}") from None
    argv = [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
    if not _is_daemon(argv):
        shown = " ".join(argv) or "(no command line: a kernel thread or a zombie)"
        raise _ResetError(f"process {pid} is not the v2g-controller daemon ({shown}); nothing sent")


def _reset_faults(args: argparse.Namespace) -> int:
    try:
        pid = args.pid if args.pid is not None else _service_main_pid()
        _check_is_daemon(pid)
        os.kill(pid, signal.SIGUSR1)
    except _ResetError as exc:
        print(f"reset-faults: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except ProcessLookupError:
        print(f"reset-faults: no process {pid}: is the daemon running?", file=sys.stderr)
        return ExitCode.FAILURE
    except PermissionError:
        print(
            f"reset-faults: not allowed to signal process {pid}; run it with sudo",
            file=sys.stderr,
        )
        return ExitCode.FAILURE
    print(f"sent a fault reset (SIGUSR1) to the v2g-controller daemon, process {pid}.")
    print(
        "The daemon accepts it only when every cause is gone (the E-stop released, the fault "
        "cleared); its log says whether it did: "
        "journalctl -u v2g-controller -g 'fault reset' -n 5"
    )
    return ExitCode.OK


def _ask_daemon(command: str, args: argparse.Namespace) -> dict[str, object] | None:
    """The daemon's answer, or None once the reason it could not be had is printed."""
    path = args.socket if args.socket is not None else default_socket_path(os.environ)
    try:
        answer = ask(path, command)
    except StatusClientError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None
    if "error" in answer:
        print(f"{command}: the daemon refused the request: {answer['error']}", file=sys.stderr)
        return None
    return answer


def _status(args: argparse.Namespace) -> int:
    answer = _ask_daemon("status", args)
    if answer is None:
        return ExitCode.FAILURE
    print(json.dumps(answer, indent=2) if args.json else format_status(answer))
    return ExitCode.OK


def _reset(args: argparse.Namespace) -> int:
    answer = _ask_daemon("reset", args)
    if answer is None:
        return ExitCode.FAILURE
    reason = answer.get("reason")
    if answer.get("accepted") is True:
        print(f"reset accepted: {reason}")
        return ExitCode.OK
    print(f"reset refused: {reason}", file=sys.stderr)
    return ExitCode.FAILURE


def _schema(_args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return ExitCode.OK


def _check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.file)
    except ConfigError as error:
        _report(error)
        return ExitCode.CONFIG
    print(f"{args.file}: OK")
    return ExitCode.OK


def _probe(args: argparse.Namespace) -> int:
    """``probe inverter|vehicle|broker`` (controller/probe/): the config (and the inverter's
    register map) read here, the probe given the values."""
    try:
        config = load_config(args.config)
        inverter = config.inverter
        register_map = (
            load_register_map(inverter.register_map)
            if args.probe == "inverter"
            and inverter.profile == "register_map"
            and inverter.register_map
            else None
        )
    except ConfigError as error:
        _report(error)
        return ExitCode.CONFIG
    # The links' own log lines (a retry, a rewritten revert timer) go to stderr, warnings only:
    # stdout is the probe's report. Set here, by the command, not by the probe library, whose
    # callers (tests among them) keep their own logging.
    from controller.logs import configure_logging  # noqa: PLC0415

    configure_logging("warning", "console", sys.stderr)
    return run_probe(args, config, register_map=register_map)


_COMMANDS = {
    "ledger": _ledger,
    "reset-faults": _reset_faults,
    "schema": _schema,
    "check-config": _check_config,
    "status": _status,
    "reset": _reset,
    "probe": _probe,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = _COMMANDS.get(args.command)
    if command is not None:
        return command(args)

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
