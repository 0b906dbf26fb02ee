"""The fleet bench: its window arithmetic, its report section, and a 20-link run of it against
a real mosquitto (structure and sane counts, not speed: ``make bench`` judges the goal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench import fleet
from hil.mosquitto import find_mosquitto
from tests.bench.test_bytes import _with_machine


def test_the_busiest_second_is_a_sliding_window() -> None:
    # 0.6 .. 1.5 holds four arrivals, though no whole second from 0 does.
    assert fleet.busiest_second([0.1, 0.6, 0.9, 1.2, 1.5, 3.0]) == 4
    assert fleet.busiest_second([]) == 0


def test_arrivals_are_counted_per_second_from_the_broker_listening() -> None:
    figures = fleet._restart_figures([10.2, 10.4, 12.9, 13.0], 40, 9.5, 10.0)
    assert figures["arrivals_per_s"] == [2, 0, 1, 1]
    assert figures["busiest_second"] == 2
    assert figures["busiest_second_pct"] == 5.0
    assert figures["all_back_s"] == 3.0


def test_the_spread_goes_into_the_config_and_the_default_stays_otherwise() -> None:
    assert fleet.fleet_config(1883, 30.0).aggregator.reconnect_spread_s == 30.0
    assert fleet.fleet_config(1883, None).aggregator.reconnect_spread_s == 45.0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_small_fleet_acks_reconnects_and_reports(tmp_path: Path) -> None:
    assert find_mosquitto() is not None, "mosquitto is not installed (make test installs it)"
    figures = fleet.run(workdir=tmp_path, quick=True)
    assert figures["note"]
    result: dict[str, Any] = figures["fleet"]
    chargers = fleet.QUICK["chargers"]
    assert result["chargers"] == chargers
    ack = result["fan_out"]["ack_ms"]
    assert ack["n"] == chargers  # every charger acked its setpoint
    assert 0 < ack["p50"] <= ack["p99"] <= ack["max"]
    restart = result["restart"]
    assert restart["reconnects"] == chargers  # each link stamped its own reconnect once
    assert sum(restart["arrivals_per_s"]) == chargers
    assert 1 <= restart["busiest_second"] <= chargers
    assert restart["all_back_s"] is not None
    assert restart["all_back_s"] >= 0
    steady = result["steady"]
    assert steady["publishes_per_s"] > 0  # telemetry flows while every charger follows
    assert steady["broker_cpu_pct"] >= 0
    assert all(rss is not None and rss > 0 for rss in result["rss_mb"]["link_processes"])
    text = bench_main.render(_with_machine({"fleet": result}))
    assert "## A fleet against one broker (issue 20)" in text
    assert f"{chargers:,} real aggregator links" in text
