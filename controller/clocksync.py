"""Whether the wall clock can be trusted for time-based policy (tariff windows, departure, wear).

A charger board without a battery-backed RTC boots with a wrong date (the last shutdown, or the
build epoch) until NTP corrects it. The control step asks ``ClockTrust.trusted`` before it lets a
window or a departure plan discharge the car, and holds back while it says no.

Two checks:

* The kernel's NTP state, read with adjtimex(2) (``modes = 0``: read only). The clock counts as
  synchronised exactly when systemd-timedated's ``NTPSynchronized`` says so: the kernel's maximum
  error is below 16 s. An unsynchronised kernel returns ``TIME_ERROR`` with that bound at 16 s;
  ``TIME_ERROR`` alone is not the test, because systemd-timesyncd keeps ``STA_UNSYNC`` (hence
  ``TIME_ERROR``) set on a synchronised clock when the RTC keeps local time.
* The wall date is not before ``BUILD_DATE``: a clock earlier than the software is certainly
  wrong, whatever the kernel says.

Where adjtimex cannot be called (not Linux; the system-call filter refuses it, as systemd's
``ProtectClock=yes`` does; ctypes cannot reach the C library), the sync state is unknown: the
clock is trusted on the date check alone, and a warning says so once. Refusing every discharge
plan on every board where the check cannot run would silently switch V2G off there; the unit in
systemd/ allows the read so that production boards get the full check.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(component="clock")

# Bump on every release (to the release date or a little before): a wall clock earlier than this
# is certainly wrong. Never later than the release itself, or a correct clock would be distrusted.
BUILD_DATE = dt.date(2026, 12, 1)

# The kernel and systemd are asked again at most this often (monotonic seconds).
RECHECK_EVERY_S = 10.0

# adjtimex(2) return values (clock states) that this module names.
TIME_OK = 0
TIME_ERROR = 5
_STATE_NAMES = {
    TIME_OK: "TIME_OK",
    1: "TIME_INS",
    2: "TIME_DEL",
    3: "TIME_OOP",
    4: "TIME_WAIT",
    TIME_ERROR: "TIME_ERROR",
}

# systemd's ntp_synced(): synchronised while the kernel's maximum error is below 16 s (the
# kernel's NTP_PHASE_LIMIT; it sets STA_UNSYNC when the bound grows past it).
SYNCED_MAX_ERROR_US = 16_000_000


@dataclass(frozen=True, slots=True)
class KernelClock:
    """What adjtimex(2) said about the system clock."""

    state: int  # the return value: TIME_OK ... TIME_ERROR
    max_error_us: int  # the kernel's bound on the clock's error
    status: int  # STA_* bits

    @property
    def synchronised(self) -> bool:
        """What systemd-timedated reports as ``NTPSynchronized``."""
        return self.max_error_us < SYNCED_MAX_ERROR_US

    def describe(self) -> str:
        """For reasons and logs: the state name and the error bound in seconds."""
        name = _STATE_NAMES.get(self.state, f"state {self.state}")
        return f"{name}, maximum error {self.max_error_us / 1e6:g} s"


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    # struct timex of <sys/timex.h>, as the plain ``adjtimex`` symbol takes it on every Linux
    # ABI (time_t and the syscall longs are C longs there), with the kernel's reserved tail.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


def read_kernel_clock() -> KernelClock:
    """adjtimex(2) with ``modes = 0`` (nothing is changed). Raises OSError when it cannot run."""
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, f"adjtimex exists only on Linux, not {sys.platform}")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError) as exc:
        raise OSError(errno.ENOSYS, f"adjtimex not found in the C library: {exc}") from None
    timex = _Timex()  # zeroed: modes = 0 reads the state without adjusting anything
    state = adjtimex(ctypes.byref(timex))
    if state < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"adjtimex failed: {errno.errorcode.get(code, code)}")
    return KernelClock(state=state, max_error_us=timex.maxerror, status=timex.status)


def simulated_kernel_clock() -> KernelClock:
    """Simulation only (``V2G_SIMULATED_CLOCK``, the hil/ suite, ``make demo``): a kernel that
    reports a synchronised clock, so a test machine without NTP does not hold back the plans."""
    return KernelClock(state=TIME_OK, max_error_us=0, status=0)


class ClockTrust:
    """Whether the wall clock may drive time-based policy, re-checked every ``recheck_every_s``.

    ``trusted(now_monotonic_s)`` answers; ``reason`` says why, in words a technician reads (for
    the decision's reasons and the log). The first answer and each change after it are logged
    once (a warning when not trusted), never each check.
    """

    def __init__(
        self,
        *,
        adjtimex: Callable[[], KernelClock] = read_kernel_clock,
        wall_clock_s: Callable[[], float] = time.time,
        build_date: dt.date = BUILD_DATE,
        recheck_every_s: float = RECHECK_EVERY_S,
    ) -> None:
        if not math.isfinite(recheck_every_s) or recheck_every_s < 0:
            raise ValueError(
                f"recheck_every_s: expected 0 or more seconds, found {recheck_every_s}"
            )
        self._adjtimex = adjtimex
        self._wall_clock_s = wall_clock_s
        self._build_date = build_date
        self._recheck_every_s = recheck_every_s
        self._checked_at_s: float | None = None
        self._trusted: bool | None = None  # None until the first check
        self._reason = "not checked yet"
        self._unknown_logged = False

    def __repr__(self) -> str:
        return f"ClockTrust(trusted={self._trusted}, reason={self._reason!r})"

    @property
    def reason(self) -> str:
        """Why the last answer was what it was."""
        return self._reason

    def trusted(self, now_monotonic_s: float) -> bool:
        """Whether the wall clock is right enough for windows, departure and the wear day.

        Checks again when ``recheck_every_s`` has passed since the last check (or the monotonic
        time went backwards, which only a test's clock does); otherwise the last answer.
        """
        if not math.isfinite(now_monotonic_s):
            raise ValueError(f"now_monotonic_s: expected a finite time, found {now_monotonic_s}")
        last_s = self._checked_at_s
        if (
            self._trusted is None
            or last_s is None
            or not 0 <= now_monotonic_s - last_s < self._recheck_every_s
        ):
            self._checked_at_s = now_monotonic_s
            trusted, self._reason = self._check()
            if trusted is not self._trusted:
                self._log_change(trusted)
            self._trusted = trusted
        return self._trusted

    def _check(self) -> tuple[bool, str]:
        wall_s = self._wall_clock_s()
        try:
            wall = dt.datetime.fromtimestamp(wall_s, dt.UTC)
        except (ValueError, OverflowError, OSError):
            return False, f"wall clock unreadable ({wall_s}): time-based plans held back"
        if wall.date() < self._build_date:
            return False, (
                f"wall clock at {wall:%Y-%m-%d %H:%M} UTC is before this software's build date "
                f"{self._build_date}: not yet set (no RTC, no NTP yet); time-based plans held back"
            )
        try:
            kernel = self._adjtimex()
        except OSError as exc:
            if not self._unknown_logged:
                self._unknown_logged = True
                log.warning(
                    "clock sync state unknown: adjtimex cannot be read, only the date is checked",
                    error=str(exc),
                    build_date=self._build_date.isoformat(),
                )
            return True, f"clock sync state unknown ({exc}); date {wall:%Y-%m-%d} is plausible"
        if not kernel.synchronised:
            return False, (
                f"clock not synchronised (kernel: {kernel.describe()}); time-based plans held "
                "back until NTP sets it"
            )
        return True, f"clock synchronised (kernel: {kernel.describe()})"

    def _log_change(self, trusted: bool) -> None:
        if trusted:
            log.info("wall clock trusted", reason=self._reason)
        else:
            log.warning("wall clock not trusted", reason=self._reason)
