"""ClockTrust: the kernel's NTP state and the build date decide whether the clock is trusted."""

from __future__ import annotations

import datetime as dt
import errno
import sys

import pytest
import structlog

from controller.clocksync import (
    BUILD_DATE,
    RECHECK_EVERY_S,
    TIME_ERROR,
    TIME_OK,
    ClockTrust,
    KernelClock,
    read_kernel_clock,
    simulated_kernel_clock,
)

# What an unsynchronised Linux kernel reports (this test machine does): STA_UNSYNC, a 16 s bound.
UNSYNCED = KernelClock(state=TIME_ERROR, max_error_us=16_000_000, status=0x40)
SYNCED = KernelClock(state=TIME_OK, max_error_us=120_000, status=0x2001)
AFTER_BUILD_S = dt.datetime.combine(BUILD_DATE, dt.time(12), dt.UTC).timestamp() + 86_400
BEFORE_BUILD_S = dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()  # an RTC-less board at boot


class FakeKernel:
    """adjtimex(2) as the test says, counting the calls."""

    def __init__(self, reading: KernelClock | OSError) -> None:
        self.reading = reading
        self.calls = 0

    def __call__(self) -> KernelClock:
        self.calls += 1
        if isinstance(self.reading, OSError):
            raise self.reading
        return self.reading


def trust(kernel: FakeKernel, wall_s: float = AFTER_BUILD_S) -> ClockTrust:
    return ClockTrust(adjtimex=kernel, wall_clock_s=lambda: wall_s)


@pytest.mark.timeout(10)
def test_time_error_is_not_trusted_and_says_why() -> None:
    """An unsynchronised kernel (TIME_ERROR, maximum error 16 s): not trusted, with a reason."""
    clock = trust(FakeKernel(UNSYNCED))
    assert clock.trusted(0.0) is False
    assert "not synchronised" in clock.reason
    assert "TIME_ERROR" in clock.reason


@pytest.mark.timeout(10)
def test_synchronised_kernel_with_a_date_before_the_build_is_not_trusted() -> None:
    """TIME_OK but a wall date before BUILD_DATE: the date is certainly wrong."""
    clock = trust(FakeKernel(SYNCED), wall_s=BEFORE_BUILD_S)
    assert clock.trusted(0.0) is False
    assert "before this software's build date" in clock.reason
    assert "2025-01-01" in clock.reason


@pytest.mark.timeout(10)
def test_synchronised_kernel_and_a_plausible_date_is_trusted() -> None:
    """TIME_OK, a small error bound and a date after the build: trusted."""
    clock = trust(FakeKernel(SYNCED))
    assert clock.trusted(0.0) is True
    assert clock.reason.startswith("clock synchronised")


@pytest.mark.timeout(10)
def test_time_error_with_a_small_error_bound_counts_as_synchronised() -> None:
    """systemd's rule, not STA_UNSYNC: timesyncd keeps STA_UNSYNC (TIME_ERROR) set on a synced
    clock when the RTC keeps local time, and NTPSynchronized still says yes."""
    local_rtc = KernelClock(state=TIME_ERROR, max_error_us=200_000, status=0x2041)
    assert trust(FakeKernel(local_rtc)).trusted(0.0) is True


@pytest.mark.timeout(10)
def test_answer_is_cached_for_the_recheck_interval() -> None:
    """The kernel is asked at most once per RECHECK_EVERY_S of monotonic time."""
    kernel = FakeKernel(UNSYNCED)
    clock = trust(kernel)
    assert clock.trusted(100.0) is False
    kernel.reading = SYNCED  # NTP synchronises the clock
    assert clock.trusted(100.0 + RECHECK_EVERY_S - 0.001) is False  # still the cached answer
    assert kernel.calls == 1
    assert clock.trusted(100.0 + RECHECK_EVERY_S) is True
    assert kernel.calls == 2


@pytest.mark.timeout(10)
def test_each_transition_is_logged_once() -> None:
    """Trusted -> not and not -> trusted are logged once each, not at every check."""
    kernel = FakeKernel(SYNCED)
    clock = trust(kernel)
    with structlog.testing.capture_logs() as logs:
        for i in range(3):
            clock.trusted(i * RECHECK_EVERY_S)
        kernel.reading = UNSYNCED
        for i in range(3, 6):
            clock.trusted(i * RECHECK_EVERY_S)
        kernel.reading = SYNCED
        for i in range(6, 9):
            clock.trusted(i * RECHECK_EVERY_S)
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    assert events == [
        ("wall clock trusted", "info"),
        ("wall clock not trusted", "warning"),
        ("wall clock trusted", "info"),
    ]
    assert kernel.calls == 9


@pytest.mark.timeout(10)
def test_unknown_sync_state_falls_back_to_the_date_and_warns_once() -> None:
    """adjtimex refused (a seccomp filter's EPERM): trusted on the date alone, one warning."""
    refused = FakeKernel(OSError(errno.EPERM, "adjtimex failed: EPERM"))
    clock = trust(refused)
    with structlog.testing.capture_logs() as logs:
        for i in range(4):
            assert clock.trusted(i * RECHECK_EVERY_S) is True
    assert "sync state unknown" in clock.reason
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == [
        "clock sync state unknown: adjtimex cannot be read, only the date is checked"
    ]
    # The date check still holds without the kernel's answer.
    assert trust(refused, wall_s=BEFORE_BUILD_S).trusted(0.0) is False


@pytest.mark.timeout(10)
def test_unreadable_wall_clock_and_bad_arguments() -> None:
    """A wall clock that gives nonsense is not trusted; a non-finite monotonic time is refused."""
    clock = trust(FakeKernel(SYNCED), wall_s=float("nan"))
    assert clock.trusted(0.0) is False
    assert "unreadable" in clock.reason
    with pytest.raises(ValueError, match="now_monotonic_s"):
        clock.trusted(float("inf"))
    with pytest.raises(ValueError, match="recheck_every_s"):
        ClockTrust(recheck_every_s=-1.0)


@pytest.mark.timeout(10)
def test_simulated_kernel_clock_is_synchronised() -> None:
    """The simulation's stand-in never holds a simulated night's plans back."""
    assert ClockTrust(adjtimex=simulated_kernel_clock).trusted(0.0) is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex(2) is Linux only")
@pytest.mark.timeout(10)
def test_the_real_adjtimex_answers_on_this_machine() -> None:
    """The ctypes call reaches the kernel: a clock state and an error bound within range."""
    kernel = read_kernel_clock()  # a sandbox that refuses the call fails here, saying why
    sys.stderr.write(f"adjtimex: {kernel} ({kernel.describe()})\n")  # seen with -s
    assert TIME_OK <= kernel.state <= TIME_ERROR
    assert kernel.max_error_us >= 0
    assert kernel.synchronised is (kernel.max_error_us < 16_000_000)
