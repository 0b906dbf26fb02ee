"""What ``status`` says (controller/statusd.py): the document built from the last control cycle,
the advice on resetting, and the readable summary the command line prints from any answer."""

from __future__ import annotations

import datetime as dt
import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.snapshots import PowerCommand, PowerState
from controller.links import ControlOutput, ControlReport, LinkStatus
from controller.statusd import (
    LinkView,
    ResetPolicy,
    ResetPreview,
    format_status,
    link_reason,
    reset_advice,
    status_document,
)

AUTO = ResetPolicy(mode="auto", hold_s=60.0)


def report(**output: object) -> ControlReport:
    decision = ControlOutput(
        command=PowerCommand(-3000.0, enable=True),
        state=PowerState.DISCHARGING,
        binding_limit="soc_floor discharge <= 3000 W (SoC 41 %, floor 40 %)",
        reasons=("soc_floor: SoC 41 % near the floor 40 %",),
        limits=(
            "soc_floor discharge <= 3000 W (SoC 41 %, floor 40 %)",
            "inverter_rating discharge <= 7400 W",
        ),
        source="aggregator",
        setpoint_id="sp-7",
        requested_w=-5000.0,
        **output,  # type: ignore[arg-type]
    )
    return ControlReport(
        monotonic_s=100.0,
        wall=dt.datetime(2026, 12, 3, 18, 0, tzinfo=dt.UTC),
        output=decision,
        measured_power_w=-2987.4,
        soc_pct=41.0,
        voltage_v=math.nan,  # not measured
    )


def document(**output: object) -> dict[str, object]:
    return status_document(
        version="0.1.0",
        uptime_s=7384.2,
        ready=True,
        stopping=False,
        cycles=73842,
        report=report(**output),
        report_age_s=0.04,
        links=[
            LinkView("vehicle", LinkStatus.UP, None, 0.05),
            LinkView("inverter", LinkStatus.UP, None, 0.2),
            LinkView("aggregator", LinkStatus.DOWN, "[Errno 111] Connection refused"),
        ],
        preview=None,
        policy=AUTO,
    )


def test_the_document_carries_the_decision_the_limits_and_json_has_no_nan() -> None:
    """State, source, power asked, commanded and measured, SoC, every limit and the binding one;
    an unmeasured figure is null (JSON has no NaN)."""
    status = document()
    assert status["state"] == "discharging"
    assert status["source"] == "aggregator"
    assert status["setpoint_id"] == "sp-7"
    assert (status["requested_w"], status["commanded_w"]) == (-5000.0, -3000.0)
    assert status["measured_power_w"] == -2987.4
    assert status["soc_pct"] == 41.0
    assert status["vehicle_voltage_v"] is None
    assert status["binding_limit"] == "soc_floor discharge <= 3000 W (SoC 41 %, floor 40 %)"
    assert len(status["limits"]) == 2  # type: ignore[arg-type]
    assert status["links"] == {
        "vehicle": {"status": "up", "reason": None, "data_age_s": 0.05},
        "inverter": {"status": "up", "reason": None, "data_age_s": 0.2},
        "aggregator": {
            "status": "down",
            "reason": "[Errno 111] Connection refused",
            "data_age_s": None,
        },
    }
    json.dumps(status, allow_nan=False)  # raises on a NaN


def test_the_summary_reads_as_the_troubleshooting_guide_shows_it() -> None:
    """The readable summary: uptime in hours, the power line, each link, the binding limit."""
    text = format_status(document())
    assert text.splitlines()[:4] == [
        "daemon      v2g-controller 0.1.0, up 2 h 03 min, ready (cycle 73842, 0.04 s ago)",
        "state       discharging (source: aggregator, setpoint sp-7), power stage enabled",
        "power       commanded -3000 W, requested -5000 W, measured -2987.4 W (+ charges the car)",
        "vehicle     SoC 41 %",
    ]
    assert "            aggregator down: [Errno 111] Connection refused" in text
    assert "limits      binding: soc_floor discharge <= 3000 W (SoC 41 %, floor 40 %)" in text
    assert text.endswith("faults      none latched")


def test_reset_advice_follows_the_cause_the_preview_and_the_mode() -> None:
    """Nothing latched; a cause present (named remedy); gone (clears now); an E-stop never
    clears by itself, and power after it waits for a start; manual mode never by itself."""
    assert reset_advice([], None, AUTO) == "nothing latched: nothing to reset"
    refused = ResetPreview(False, "fault_reset: refused, a cause is still present")
    advice = reset_advice(["inverter: fault 0x0004"], refused, AUTO)
    assert advice.startswith("a cause is still present: the inverter must answer without a fault")
    assert "clears by itself 60 s after the cause went" in advice
    accepted = ResetPreview(True, "fault_reset: cleared: emergency stop")
    advice = reset_advice(["emergency stop"], accepted, AUTO)
    assert advice.startswith("every cause is gone: `v2g-controller reset`")
    assert "by itself" not in advice
    assert "power resumes only on a new start" in advice
    manual = ResetPolicy(mode="manual", hold_s=60.0)
    assert "by itself" not in reset_advice(["vehicle: cell overvoltage"], accepted, manual)
    marked = ResetPolicy(mode="auto", hold_s=60.0, manual_kinds=("vehicle_fault",))
    assert "by itself" not in reset_advice(["vehicle: cell overvoltage"], accepted, marked)


class Explained:
    reason = "TLS: certificate has expired"


class VehicleLike:
    last_error = "bus-off (can0)"


def test_link_reasons_come_from_what_each_link_says() -> None:
    """A down link's own reason (aggregator ``reason``, vehicle ``last_error``); an inverter's
    faults even while up; disabled and starting say so; a healthy link has none."""
    assert link_reason(Explained(), LinkStatus.DOWN) == "TLS: certificate has expired"
    assert link_reason(VehicleLike(), LinkStatus.DOWN) == "bus-off (can0)"
    assert link_reason(VehicleLike(), LinkStatus.UP) is None
    assert link_reason(object(), LinkStatus.UP, ("fault 0x0004",)) == "fault 0x0004"
    assert link_reason(object(), LinkStatus.DISABLED) == "switched off in the config"
    assert link_reason(object(), LinkStatus.STARTING) == "starting: not yet connected"
    assert str(link_reason(object(), LinkStatus.DOWN)).startswith("down; the link gave no reason")


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["state", "links", "faults", "limits", "reasons", "uptime_s", "soc_pct", "commanded_w"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS | st.text(max_size=6), JSON, max_size=8))
def test_any_answer_is_printed_without_raising(answer: dict[str, object]) -> None:
    """The command line prints whatever JSON object a daemon (of any version) answers."""
    assert format_status(answer).startswith("daemon ")


def test_faults_present_but_not_latched_are_shown_apart_from_the_latched_ones() -> None:
    """Stale data names a fault that no latch holds: status lists it as present, not latched,
    so the advice is not to reset what clears by itself."""
    status = document(faults=("emergency stop",), present_faults=("vehicle data stale",))
    faults = status["faults"]
    assert isinstance(faults, dict)
    assert faults["latched"] == ["emergency stop"]
    assert faults["present"] == ["vehicle data stale"]
    assert "present (not latched): vehicle data stale" in format_status(status)
