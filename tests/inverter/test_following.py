"""The "not following" check (issue 16, item 10), fed commands and measurements with their
times: no clock, no sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.inverter.following import FollowingBand, FollowingCheck

BAND = FollowingBand(settle_s=3.0, hold_s=2.0)
POLL_S = 0.5


def run(
    check: FollowingCheck, measured: float | None, start_s: float, end_s: float
) -> tuple[float, str] | None:
    """Observe ``measured`` every poll from ``start_s`` to ``end_s``: the first reason, when."""
    now_s = start_s
    while now_s <= end_s + 1e-9:
        reason = check.observe(measured, now_s)
        if reason is not None:
            return now_s, reason
        now_s += POLL_S
    return None


def test_a_device_that_ignores_a_step_is_not_following_after_settle_and_hold() -> None:
    """0 W held, then 5000 W at t=10 s, measured stays 0 W: a fault with a reason once the
    settle time (3 s) and the hold (2 s) have passed, not before."""
    check = FollowingCheck(BAND)
    check.command(0.0, 0.0)
    assert run(check, 0.0, 0.0, 10.0) is None
    check.command(5000.0, 10.0)
    assert run(check, 0.0, 10.0, 15.0) is None
    found = run(check, 0.0, 15.0, 20.0)
    assert found is not None
    at_s, reason = found
    assert at_s == pytest.approx(15.5)
    assert reason == (
        "inverter not following: measured 0 W, commanded 5000 W (band 500 W) for 2.5 s"
    )


def test_within_the_band_is_following() -> None:
    """10 % of the command, or 200 W near 0 W, is within the band."""
    check = FollowingCheck(BAND)
    check.command(-6000.0, 0.0)
    assert run(check, -5450.0, 0.0, 30.0) is None  # 550 W off: within 600 W
    check = FollowingCheck(BAND)
    check.command(1000.0, 0.0)
    assert run(check, 1190.0, 0.0, 30.0) is None  # 190 W off: within the 200 W floor
    assert run(check, 1250.0, 30.0, 40.0) is not None  # 250 W off: outside


def test_a_lagging_follower_of_a_ramp_is_following() -> None:
    """The core ramps 0 -> 7400 W at 2 kW/s, one command a tick; the device follows 1 s late."""
    check = FollowingCheck(BAND)
    commands = [(t / 10, min(7400.0, 2000.0 * t / 10)) for t in range(0, 100)]
    for now_s, power_w in commands:
        check.command(power_w, now_s)
        late_w = min(7400.0, max(0.0, 2000.0 * (now_s - 1.0)))
        assert check.observe(late_w, now_s) is None
    assert run(check, 7400.0, 10.0, 30.0) is None


def test_a_glitch_shorter_than_the_hold_is_not_a_fault() -> None:
    """One or two polls outside the band (a meter glitch) are not "not following"."""
    check = FollowingCheck(BAND)
    check.command(3000.0, 0.0)
    assert run(check, 3000.0, 0.0, 10.0) is None
    assert run(check, 0.0, 10.5, 12.0) is None  # 1.5 s outside
    assert run(check, 3000.0, 12.5, 20.0) is None  # back, and the clock restarts
    assert run(check, 0.0, 20.5, 22.0) is None


def test_unknown_measurement_while_a_power_is_commanded_is_not_following() -> None:
    """No measurement cannot prove a non-zero command is followed; at 0 W it needs none."""
    check = FollowingCheck(BAND)
    check.command(0.0, 0.0)
    assert run(check, None, 0.0, 30.0) is None
    check.command(-2000.0, 30.0)
    found = run(check, None, 30.0, 40.0)
    assert found is not None
    assert found[1] == (
        "inverter not following: measured power unknown while -2000 W is commanded, for 2.5 s"
    )
    assert found[0] == pytest.approx(32.5)  # no settle: an unknown is never on its way


def test_a_device_that_keeps_pushing_after_zero_is_not_following() -> None:
    """A disabled command is 0 W: a device still at 3 kW after it is not following."""
    check = FollowingCheck(BAND)
    check.command(3000.0, 0.0)
    check.command(0.0, 10.0)
    found = run(check, 3000.0, 10.0, 20.0)
    assert found is not None
    assert found[0] == pytest.approx(15.5)


def test_reset_forgets_the_commands() -> None:
    """After a reset (a failure, a new setup) nothing is in force, nothing is judged."""
    check = FollowingCheck(BAND)
    check.command(0.0, -10.0)
    check.command(5000.0, 0.0)
    assert run(check, 0.0, 0.0, 4.0) is None
    check.reset()
    assert run(check, 0.0, 4.0, 60.0) is None


def test_a_first_command_gets_the_settle_time() -> None:
    """With nothing known from before it, the first command is judged once it has been in
    force for the settle time."""
    check = FollowingCheck(BAND)
    check.command(5000.0, 0.0)
    found = run(check, 0.0, 0.0, 10.0)
    assert found is not None
    assert found[0] == pytest.approx(5.5)


def test_heartbeat_re_sends_do_not_restart_the_settle_time() -> None:
    """The same command re-sent every heartbeat stays the one command in force since it came."""
    check = FollowingCheck(BAND)
    check.command(0.0, -10.0)
    check.command(4000.0, 0.0)
    found = None
    for beat in range(20):
        check.command(4000.0, beat * 1.0)
        found = found or run(check, 0.0, beat * 1.0, beat * 1.0 + 0.5)
    assert found is not None
    assert found[0] == pytest.approx(5.5)  # 3 s settle, then more than 2 s outside


@given(
    st.floats(-20_000, 20_000, allow_nan=False),
    st.floats(-20_000, 20_000, allow_nan=False),
)
def test_held_command_verdict_matches_the_band(commanded_w: float, measured_w: float) -> None:
    """For one command held throughout: a fault exactly when the measurement is outside
    max(10 % of |command|, 200 W)."""
    check = FollowingCheck(BAND)
    check.command(commanded_w, 0.0)
    outside = abs(measured_w - commanded_w) > max(0.1 * abs(commanded_w), 200.0)
    assert (run(check, measured_w, 0.0, 10.0) is not None) == outside
