"""The daemon's local status channel: a Unix stream socket that ``v2g-controller status`` and
``v2g-controller reset`` talk to.

Protocol, one exchange per connection::

    client: {"command": "status"}\\n       (one line of JSON, at most MAX_REQUEST_BYTES)
    daemon: {...the answer...}\\n          (one line of JSON), then the daemon closes

Commands: ``status`` (the live state, see ``status_document``) and ``reset`` (the deliberate
fault reset, answered ``{"command": "reset", "accepted": ..., "reason": ...}``). Anything else
is answered ``{"error": "<why>"}``: a request that is too long, not UTF-8, not JSON, not an
object, or names no known command; a client that sends no complete line within the read
timeout. Nothing the client sends can raise out of the server or return a traceback.

Who may talk to it is the file's business, never the network's: the socket is in the service's
RuntimeDirectory with mode 0660, so the service's user and group (``v2g``) may connect and
nobody else. Being able to connect means being able to ask for a reset; the core still accepts
one only once every cause is gone (``controller.core.safety.reset_faults``).

The server runs as a task on the daemon's event loop and ends when that task is cancelled,
cancelling the exchanges under way. A socket that cannot be opened is logged and the daemon
runs on without it: a status channel must never stop the charger.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import math
import os
import socket
import stat
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from controller.config.schema import StatusConfig
from controller.links import ControlReport, LinkStatus

log = structlog.get_logger(component="status")

# The runtime directory systemd makes for the service (RuntimeDirectory=v2g-controller).
DEFAULT_RUNTIME_DIRECTORY = "/run/v2g-controller"
SOCKET_NAME = "status.sock"
SOCKET_MODE = 0o660  # owner and group read/write (connect(2) needs write permission, unix(7))
SERVICE_GROUP = "v2g"  # the unit's Group=: who may read the status

MAX_REQUEST_BYTES = 1024  # a request is one short line; anything longer is refused unread
READ_TIMEOUT_S = 2.0  # a client that has not sent its line by then is answered and dropped
WRITE_TIMEOUT_S = 2.0  # a client that does not read its answer is dropped
MAX_CLIENTS = 8  # exchanges at once; more are answered "busy"
CONNECT_CHECK_TIMEOUT_S = 0.5  # is another daemon answering on the socket already?

COMMANDS = ("status", "reset")

Answer = Mapping[str, object]
Handler = Callable[[str], Answer]


def default_socket_path(environ: Mapping[str, str]) -> Path:
    """Where the socket goes without ``status.socket_path``: in the directory systemd made for
    the service ($RUNTIME_DIRECTORY, systemd.exec(5); the first one if it lists several)."""
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime or DEFAULT_RUNTIME_DIRECTORY) / SOCKET_NAME


def status_socket_path(config: StatusConfig, environ: Mapping[str, str]) -> Path | None:
    """The daemon's socket as the config says (None: switched off)."""
    if not config.enabled:
        return None
    if config.socket_path is not None:
        return Path(config.socket_path)
    return default_socket_path(environ)


class StatusSocketError(Exception):
    """The status socket cannot be opened (why, as the technician reads it)."""


class _BadRequest(Exception):  # noqa: N818  the reason a request is refused, not a failure
    """A request the server refuses; its message is the answer's ``error``."""


class StatusServer:
    """Serves ``handler``'s answers on a Unix socket at ``path`` until cancelled."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        read_timeout_s: float = READ_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
        max_clients: int = MAX_CLIENTS,
        mode: int = SOCKET_MODE,
    ) -> None:
        self.path = path
        self._handler = handler
        self._max_request_bytes = max_request_bytes
        self._read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s
        self._max_clients = max_clients
        self._mode = mode
        self._clients: set[asyncio.Task[None]] = set()
        self._inode: int | None = None
        self.listening = asyncio.Event()  # set once the socket accepts connections
        self.answered = 0  # exchanges completed (for tests and the log)
        self.refused_busy = 0  # connections answered "busy" over max_clients

    async def serve(self) -> None:
        """Listen until cancelled; on a socket that cannot be opened, log why and return."""
        try:
            server = await self._open()
        except StatusSocketError as exc:
            log.error(
                "status socket not opened; `v2g-controller status` cannot reach this daemon, "
                "which runs on",
                path=str(self.path),
                error=str(exc),
            )
            return
        log.info("status socket open", path=str(self.path), mode=oct(self._mode))
        self.listening.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            server.close()
            await self._cancel_clients()
            self._remove_socket()

    # -- the socket file ----------------------------------------------------------------------

    async def _open(self) -> asyncio.AbstractServer:
        directory = self.path.parent
        try:
            is_directory = directory.is_dir()
        except OSError as exc:  # 3.11's is_dir lets EACCES through (a parent without search)
            raise StatusSocketError(f"cannot look at directory {directory}: {exc}") from None
        if not is_directory:
            raise StatusSocketError(
                f"directory {directory} does not exist (systemd makes "
                f"{DEFAULT_RUNTIME_DIRECTORY} with RuntimeDirectory=v2g-controller)"
            )
        await self._clear_stale_socket()
        try:
            server = await asyncio.start_unix_server(self._accept, path=str(self.path))
        except OSError as exc:
            raise StatusSocketError(f"cannot listen on {self.path}: {exc}") from None
        try:
            # Made under the service's UMask (0077 in the unit: owner only), so until this
            # chmod it is only ever stricter than 0660, never looser.
            self.path.chmod(self._mode)
            self._inode = self.path.stat().st_ino
        except OSError as exc:
            server.close()
            raise StatusSocketError(
                f"cannot set mode {oct(self._mode)} on {self.path}: {exc}"
            ) from None
        return server

    async def _clear_stale_socket(self) -> None:
        """A socket left by a daemon that was killed is removed; a live one is not taken over,
        and a file that is not a socket is never removed."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StatusSocketError(f"cannot look at {self.path}: {exc}") from None
        if not stat.S_ISSOCK(mode):
            raise StatusSocketError(f"{self.path} exists and is not a socket; not removed")
        try:
            async with asyncio.timeout(CONNECT_CHECK_TIMEOUT_S):
                _, writer = await asyncio.open_unix_connection(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: a leftover
        except (OSError, TimeoutError) as exc:
            raise StatusSocketError(f"cannot check whether {self.path} is in use: {exc}") from None
        else:
            writer.close()
            raise StatusSocketError(f"another process answers on {self.path}; is a daemon running?")
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StatusSocketError(f"cannot remove the old socket {self.path}: {exc}") from None
        log.info("removed a status socket left by an earlier run", path=str(self.path))

    def _remove_socket(self) -> None:
        # Only the socket this server made: a newer daemon's socket at the same path stays.
        with contextlib.suppress(OSError):
            if self._inode is not None and os.lstat(self.path).st_ino == self._inode:
                self.path.unlink()

    async def _cancel_clients(self) -> None:
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        if clients:
            await asyncio.wait(clients)

    # -- one exchange ---------------------------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback that starts a task of ours: asyncio's own task for a coroutine
        # callback reports a cancelled exchange as an error (3.11 streams), and this server
        # must keep every task it starts so it can cancel them when it ends.
        if len(self._clients) >= self._max_clients:
            self._refuse_busy(writer)
            return
        task = asyncio.create_task(self._exchange(reader, writer), name="status-client")
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    def _refuse_busy(self, writer: asyncio.StreamWriter) -> None:
        """Over the limit: the busy line and close, here and now, with no task and no read, so
        a client connecting in a loop costs one short write each and nothing that waits. The
        line fits a fresh socket's buffer, so write() sends it at once; the client reads it even
        if its request is then left unread (its ECONNRESET comes after the queued data, unix(7)
        stream semantics; ``ask`` reads to the newline)."""
        self.refused_busy += 1
        line = json.dumps({"error": f"busy: {self._max_clients} requests under way; try again"})
        writer.write(line.encode() + b"\n")  # a client gone already: the transport drops it
        writer.close()

    @property
    def exchanges_under_way(self) -> int:
        """Connections being answered now (never more than ``max_clients``)."""
        return len(self._clients)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer = await self._answer(reader, writer)
            await self._send(writer, answer)
            self.answered += 1
        except (ConnectionError, TimeoutError) as exc:
            # The client went away or does not read: nothing more to tell it.
            log.debug("status client dropped", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # no client may end the server or the daemon
            log.error("status request failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Answer:
        try:
            command = parse_request(await self._read_line(reader), self._max_request_bytes)
        except _BadRequest as exc:
            return {"error": str(exc)}
        if command != "status":
            # Who asked for a change, for the journal: the kernel's word, not the client's.
            log.info("status socket request", command=command, **_peer(writer))
        try:
            return self._handler(command)
        except Exception as exc:  # the client gets the reason, the log the trace
            log.error("status answer failed", command=command, exc_info=exc)
            return {"error": f"internal error answering {command!r}: {type(exc).__name__}: {exc}"}

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes:
        """The request line (without its newline), or what came before the end of input."""
        limit = self._max_request_bytes
        data = b""
        try:
            async with asyncio.timeout(self._read_timeout_s):
                while True:
                    end = data.find(b"\n")
                    if end >= 0:
                        data = data[:end]
                        break
                    if len(data) > limit:
                        break
                    chunk = await reader.read(limit + 1 - len(data))
                    if not chunk:
                        break  # the client shut its side: the request is what came
                    data += chunk
        except TimeoutError:
            raise _BadRequest(
                f"no complete request line within {self._read_timeout_s:g} s; expected one line "
                'of JSON such as {"command": "status"} followed by a newline'
            ) from None
        if len(data) > limit:
            raise _BadRequest(f"request longer than {limit} bytes; expected one short line")
        return data

    async def _send(self, writer: asyncio.StreamWriter, answer: Answer) -> None:
        try:
            text = json.dumps(answer, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            log.error("status answer not encodable", error=str(exc))
            text = json.dumps({"error": f"internal error: answer not encodable: {exc}"})
        writer.write(text.encode() + b"\n")
        async with asyncio.timeout(self._write_timeout_s):
            await writer.drain()


def _peer(writer: asyncio.StreamWriter) -> dict[str, int]:
    """The connecting process's pid, uid and gid (SO_PEERCRED, unix(7)); empty if unknown."""
    sock = writer.get_extra_info("socket")
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except (AttributeError, OSError):
        return {}
    pid, uid, gid = _UCRED.unpack(raw)
    peer = {"peer_pid": pid}
    # The unit's private user namespace (PrivateUsers=yes) shows an unmapped id as the
    # overflow id 65534: that is not who asked, so it is left out rather than logged.
    if uid != _OVERFLOW_ID:
        peer["peer_uid"] = uid
    if gid != _OVERFLOW_ID:
        peer["peer_gid"] = gid
    return peer


_OVERFLOW_ID = 65534  # /proc/sys/kernel/overflowuid and overflowgid, their default


_UCRED = struct.Struct("3i")  # struct ucred: pid_t, uid_t, gid_t (unix(7))


def parse_request(line: bytes, max_request_bytes: int = MAX_REQUEST_BYTES) -> str:
    """The command a request line names; ``_BadRequest`` with the reason when it names none."""
    if len(line) > max_request_bytes:
        raise _BadRequest(f"request longer than {max_request_bytes} bytes; expected one short line")
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise _BadRequest(f"request is not UTF-8 text (byte {exc.start})") from None
    example = 'expected one line of JSON such as {"command": "status"}'
    if not text:
        raise _BadRequest(f"empty request; {example}")
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise _BadRequest(f"request is not JSON ({exc}); {example}") from None
    if not isinstance(request, dict):
        raise _BadRequest(f"request is a JSON {type(request).__name__}, not an object; {example}")
    command = request.get("command")
    if command is None:
        raise _BadRequest(f"request has no 'command'; {example}")
    if not isinstance(command, str):
        raise _BadRequest(f"'command' is a {type(command).__name__}, expected a string")
    if command not in COMMANDS:
        raise _BadRequest(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
    extra = sorted(key for key in request if key != "command")
    if extra:
        raise _BadRequest(f"unexpected keys {', '.join(map(repr, extra))}; only 'command' is read")
    return command


# -- what the status says -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkView:
    """One link as ``status`` shows it."""

    name: str
    status: LinkStatus
    reason: str | None = None  # why it is not healthy; None when it is
    data_age_s: float | None = None  # age of its latest snapshot, where it keeps one

    def as_json(self) -> dict[str, object]:
        return {
            "status": str(self.status),
            "reason": self.reason,
            "data_age_s": _rounded(self.data_age_s, 2),
        }


def link_reason(link: object, status: LinkStatus, faults: Sequence[str] = ()) -> str | None:
    """Why a link is not healthy, from what it says about itself (``reason`` on the aggregator
    and an unavailable link, ``last_error`` on the vehicle link) and, for the inverter, the
    faults its snapshot carries. None for a healthy link."""
    if status is LinkStatus.DISABLED:
        return "switched off in the config"
    if status is LinkStatus.STARTING:
        return "starting: not yet connected"
    if faults:
        return "; ".join(faults)
    if status is LinkStatus.UP:
        return None
    for attribute in ("reason", "last_error"):
        value = getattr(link, attribute, None)
        if isinstance(value, str) and value:
            return value
    return "down; the link gave no reason (see the log: journalctl -u v2g-controller)"


@dataclass(frozen=True, slots=True)
class ResetPolicy:
    """How latched faults clear at this site (config ``safety``)."""

    mode: str  # "auto" or "manual"
    hold_s: float  # auto: clears this long after the cause went
    manual_kinds: tuple[str, ...] = ()  # fault kinds that always need a person


@dataclass(frozen=True, slots=True)
class ResetPreview:
    """What a reset would answer now (``CoreControlStep.reset_preview``)."""

    accepted: bool
    reason: str


def reset_advice(latched: Sequence[str], preview: ResetPreview | None, policy: ResetPolicy) -> str:
    """How the technician clears what is latched, in one sentence or two."""
    if not latched:
        return "nothing latched: nothing to reset"
    command = "`v2g-controller reset` (or the board's reset button)"
    needs_person = (
        policy.mode == "manual"
        or "emergency stop" in latched
        or any(
            cause.startswith(kind.removesuffix("_fault") + ":")
            for kind in policy.manual_kinds
            for cause in latched
        )
    )
    by_itself = (
        ""
        if needs_person
        else f"; in auto mode it also clears by itself {policy.hold_s:g} s after the cause went"
    )
    emergency = (
        "; after an emergency stop power resumes only on a new start (a setpoint or the plan)"
        if "emergency stop" in latched
        else ""
    )
    if preview is None:
        return f"once every cause is gone, {command}{by_itself}{emergency}"
    if preview.accepted:
        return f"every cause is gone: {command} clears it now{by_itself}{emergency}"
    return (
        f"a cause is still present: {'; '.join(_remedies(latched))}; then {command}"
        f"{by_itself}{emergency}"
    )


def _remedies(latched: Sequence[str]) -> list[str]:
    """What takes each latched cause away, once per kind."""
    remedies: list[str] = []
    for cause in latched:
        if cause == "emergency stop":
            remedy = "release the emergency stop"
        elif cause.startswith("vehicle:"):
            remedy = "the car must stop reporting its fault (see the car; unplug and plug in)"
        elif cause.startswith("inverter:"):
            remedy = "the inverter must answer without a fault (see the inverter link above)"
        else:
            remedy = f"clear {cause!r}"
        if remedy not in remedies:
            remedies.append(remedy)
    return remedies


def status_document(
    *,
    version: str,
    uptime_s: float,
    ready: bool,
    stopping: bool,
    cycles: int,
    report: ControlReport | None,
    report_age_s: float | None,
    links: Sequence[LinkView],
    preview: ResetPreview | None,
    policy: ResetPolicy,
) -> dict[str, object]:
    """The ``status`` answer: the last control cycle's decision and measurements, each link,
    the faults and how to reset them. Pure: built from values the daemon already has."""
    latched = list(report.faults) if report is not None else []
    present = list(report.output.present_faults) if report is not None else []
    document: dict[str, object] = {
        "command": "status",
        "version": version,
        "uptime_s": _rounded(uptime_s, 1),
        "ready": ready,
        "stopping": stopping,
        "cycles": cycles,
        "last_cycle_age_s": _rounded(report_age_s, 2),
        "links": {link.name: link.as_json() for link in links},
        "faults": {
            "latched": latched,
            "present": present,  # not latched: gone once the cause is (stale data)
            "reset": None
            if preview is None
            else {"would_be_accepted": preview.accepted, "answer": preview.reason},
            "how_to_reset": reset_advice(latched, preview, policy),
            "reset_mode": policy.mode,
            "fault_hold_s": policy.hold_s,
            "manual_reset": list(policy.manual_kinds),
        },
    }
    if report is None:
        document["state"] = None
        document["note"] = "no control cycle has run yet"
        return document
    document.update(
        state=str(report.state),
        source=report.source,
        setpoint_id=report.setpoint_id,
        requested_w=_rounded(report.output.requested_w, 1),
        commanded_w=_rounded(report.commanded_w, 1),
        enabled=report.enabled,
        measured_power_w=_rounded(report.measured_power_w, 1),
        soc_pct=_rounded(report.soc_pct, 1),
        vehicle_voltage_v=_rounded(report.voltage_v, 1),
        limits=list(report.limits),
        binding_limit=report.binding_limit,
        reasons=list(report.output.reasons),
        max_charge_w=_rounded(report.max_charge_w, 1),
        max_discharge_w=_rounded(report.max_discharge_w, 1),
        soc_floor_pct=_rounded(report.soc_floor_pct, 1),
        session_allowed=report.output.session_allowed,
    )
    return document


def _rounded(value: float | None, digits: int) -> float | None:
    """JSON has no NaN or infinity: an unknown or non-finite figure is null."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits) + 0.0  # + 0.0: a -0.0 reads as 0


# -- the client side (``v2g-controller status`` and ``reset``) -------------------------------------

CLIENT_TIMEOUT_S = 5.0  # connect, ask and read the answer; the daemon answers in one cycle


class StatusClientError(Exception):
    """The daemon could not be asked (why, and what to do, as the technician reads it)."""


def _socket_group(path: Path) -> str:
    try:
        gid = path.stat().st_gid
    except OSError:
        return SERVICE_GROUP
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)  # a group without a name here: its id is all there is


def ask(path: Path, command: str, timeout_s: float = CLIENT_TIMEOUT_S) -> dict[str, object]:
    """Send ``command`` to the daemon at ``path``; its answer (which may be ``{"error": ...}``).

    Blocking: for the command line, which has nothing else to do meanwhile."""
    request = json.dumps({"command": command}).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout_s)
            client.connect(str(path))
            data = _ask_on(client, request)
    except FileNotFoundError:
        raise StatusClientError(
            f"no status socket at {path}: the daemon is not running (systemctl status "
            "v2g-controller), or it runs with status.enabled false or another "
            "status.socket_path (give that with --socket PATH)"
        ) from None
    except ConnectionRefusedError:
        raise StatusClientError(
            f"nothing answers on {path}: the daemon that made it is no longer running "
            "(systemctl status v2g-controller; journalctl -u v2g-controller -n 50)"
        ) from None
    except PermissionError:
        group = _socket_group(path)
        raise StatusClientError(
            f"not allowed to open {path}: only the service's user and group {group!r} may. "
            f"Join the group (sudo usermod -aG {group} $USER, then log in again) or use sudo"
        ) from None
    except TimeoutError:
        raise StatusClientError(
            f"the daemon did not answer within {timeout_s:g} s on {path}; is it hung? "
            "(systemctl status v2g-controller)"
        ) from None
    except OSError as exc:
        raise StatusClientError(f"cannot talk to the daemon on {path}: {exc}") from None
    if len(data) > MAX_ANSWER_BYTES:
        raise StatusClientError(f"the answer on {path} is longer than {MAX_ANSWER_BYTES} bytes")
    if not data:
        raise StatusClientError(f"the daemon closed {path} without an answer (see its log)")
    try:
        answer = json.loads(data)
    except ValueError as exc:
        raise StatusClientError(f"the answer on {path} is not JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise StatusClientError(f"the answer on {path} is not a JSON object")
    return answer


MAX_ANSWER_BYTES = 1_000_000  # a status is a few kB; more is not a daemon of ours


def _ask_on(client: socket.socket, request: bytes) -> bytes:
    """Send ``request`` on the connected ``client`` and read the answer line."""
    try:
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        # A busy daemon answers and closes without reading: its line may be waiting already.
        pass
    # The answer is one line: read to its newline, not to the end (after a request it did not
    # read in full, the daemon's close resets the connection, unix(7)).
    data = b""
    while b"\n" not in data and len(data) <= MAX_ANSWER_BYTES:
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _watts(value: object) -> str:
    return f"{value:g} W" if isinstance(value, int | float) else "unknown"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "unknown"
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{seconds:.1f} s"


def _items(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def format_status(status: Mapping[str, object]) -> str:
    """The ``status`` answer as a technician reads it on a terminal."""
    lines: list[str] = []

    def row(label: str, text: str) -> None:
        lines.append(f"{label:<11} {text}")

    def more(text: str) -> None:
        lines.append(f"{'':<11} {text}")

    phase = "stopping" if status.get("stopping") else "ready" if status.get("ready") else "starting"
    age = status.get("last_cycle_age_s")
    cycle = f"cycle {status.get('cycles')}" + (
        f", {age:g} s ago" if isinstance(age, int | float) else ""
    )
    row(
        "daemon",
        f"v2g-controller {status.get('version')}, up {_duration(status.get('uptime_s'))}, "
        f"{phase} ({cycle})",
    )
    if status.get("state") is None:
        row("state", str(status.get("note", "no control cycle has run yet")))
    else:
        stage = "enabled" if status.get("enabled") else "disabled"
        following = status.get("setpoint_id")
        source = f"{status.get('source')}" + (f", setpoint {following}" if following else "")
        row("state", f"{status.get('state')} (source: {source}), power stage {stage}")
        row(
            "power",
            f"commanded {_watts(status.get('commanded_w'))}, "
            f"requested {_watts(status.get('requested_w'))}, "
            f"measured {_watts(status.get('measured_power_w'))} (+ charges the car)",
        )
        soc = status.get("soc_pct")
        volts = status.get("vehicle_voltage_v")
        row(
            "vehicle",
            (f"SoC {soc:g} %" if isinstance(soc, int | float) else "SoC unknown")
            + ("" if not isinstance(volts, int | float) else f", pack {volts:g} V"),
        )
    links = status.get("links")
    first = True
    for name, given in links.items() if isinstance(links, dict) else ():
        view = given if isinstance(given, dict) else {}
        text = f"{name:<10} {view.get('status')}"
        if view.get("reason"):
            text += f": {view.get('reason')}"
        if isinstance(view.get("data_age_s"), int | float):
            text += f" (data {view['data_age_s']:g} s old)"
        row("links" if first else "", text)
        first = False
    if status.get("state") is not None:
        binding = status.get("binding_limit")
        row("limits", f"binding: {binding}" if binding else "none binds")
        for limit in _items(status.get("limits")):
            more(f"- {limit}")
        reasons = _items(status.get("reasons"))
        if reasons:
            row("why", reasons[0])
            for reason in reasons[1:]:
                more(reason)
    faults = status.get("faults")
    fault_lines = _fault_lines(faults if isinstance(faults, dict) else {})
    row("faults", fault_lines[0])
    for line in fault_lines[1:]:
        more(line)
    return "\n".join(lines)


def _fault_lines(faults: Mapping[str, object]) -> list[str]:
    """The faults part of the summary: what is latched, what is present, how to reset."""
    latched = _items(faults.get("latched"))
    lines = ["latched: " + ", ".join(latched) if latched else "none latched"]
    present = _items(faults.get("present"))
    if present:
        lines.append("present (not latched): " + ", ".join(present))
    reset = faults.get("reset")
    if latched and isinstance(reset, dict):
        verdict = "would be accepted" if reset.get("would_be_accepted") else "would be refused"
        lines.append(f"reset {verdict}: {reset.get('answer')}")
    if latched:
        lines.append(f"to reset: {faults.get('how_to_reset')}")
    return lines
