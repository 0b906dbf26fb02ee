"""The bench report: targets are judged from the measured figures, nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main


def _results(**overrides: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "fault_reaction_ms": {"p50": 2.0, "p99": 4.0, "max": 9.0, "n": 500},
        "fault_floor_ms": 0.8,
        "fault_floor_spread_ms": {"p50": 0.8, "p99": 1.6, "max": 2.0, "n": 500},
        "fault_floor_ratio": {"p50": 2.5, "p99": 2.5},
        "setpoint_latency_ms": {"p50": 3.0, "p99": 25.0, "max": 40.0, "n": 500},
        "setpoint_floor_ms": 1.2,
        "setpoint_floor_spread_ms": {"p50": 1.2, "p99": 5.0, "max": 6.0, "n": 500},
        "setpoint_floor_ratio": {"p50": 2.5, "p99": 5.0},
        "can_ingest_fps": 9000,
        "can_cost_ratio": 1.2,
        "nominal_cpu_pct": 1.5,
        "rss_mb": 48.0,
        "rss_growth_mb_per_h": 0.2,
        "ready_s": 0.9,
        "machine": {
            "cpu": "test cpu",
            "cores": 2,
            "arch": "x86_64",
            "kernel": "6",
            "os": "Debian",
            "python": "3.11",
            "mosquitto": "mosquitto 2",
            "packages": {"pymodbus": "3.16"},
            "load_avg_at_start": [0.1, 0.2, 0.3],
            "git_commit": "abc",
        },
        "notes": {"latency": "measured from the frame to the write"},
        "finished_at": "2026-11-25T00:00:00+00:00",
        "duration_s": 60.0,
        "command": "make bench",
    }
    results.update(overrides)
    return results


def test_targets_are_judged_from_the_figures() -> None:
    results = _results()
    verdicts = {target.key: target.met(results) for target in bench_main.TARGETS}
    assert verdicts["setpoint_latency_ms.p99"] is False  # 25 ms > 20 ms
    assert verdicts["fault_reaction_ms.p99"] is True
    assert verdicts["can_ingest_fps"] is True  # at least, not at most
    assert bench_main.TARGETS[2].met(_results(can_ingest_fps=7999)) is False


def test_a_missing_figure_is_not_measured_rather_than_met() -> None:
    results = _results()
    del results["rss_mb"]
    target = next(t for t in bench_main.TARGETS if t.key == "rss_mb")
    assert target.met(results) is None
    assert "| RSS | not measured MB |" in bench_main.render(results)


def test_report_shows_floor_verdict_and_machine() -> None:
    text = bench_main.render(_results())
    # Beside a p99 target, the floor's p99.
    assert "| setpoint latency p99 | 25.00 ms | 5.00 ms | ≤ 20.00 ms | **missed** |" in text
    assert "| fault reaction p99 | 4.00 ms | 1.60 ms | ≤ 10.00 ms | met |" in text
    assert "test cpu, 2 cores" in text
    assert "measured from the frame to the write" in text


def test_report_sets_ours_against_the_bare_path() -> None:
    text = bench_main.render(_results())
    assert "| fault_floor_spread_ms | 0.800 | 1.60 | 2.00 | 500 |" in text
    assert "| setpoint_floor_spread_ms | 1.20 | 5.00 | 6.00 | 500 |" in text
    assert "| fault reaction | 2.00 | 0.800 | 2.50 x | 4.00 | 1.60 | 2.50 x |" in text
    assert "| setpoint latency | 3.00 | 1.20 | 2.50 x | 25.00 | 5.00 | 5.00 x |" in text


def test_results_without_the_bare_path_still_render() -> None:
    # A results.json from before the bare-path floors: no spread, no ratio.
    results = _results()
    for key in ("fault_floor_spread_ms", "fault_floor_ratio"):
        del results[key]
    text = bench_main.render(results)
    assert "| fault reaction p99 | 4.00 ms |  | ≤ 10.00 ms | met |" in text
    assert "| fault reaction | 2.00 | not measured | not measured | 4.00 |" in text


def test_only_one_part_merges_into_existing_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(_results()), encoding="utf-8")

    def fake_part(**_: Any) -> dict[str, Any]:
        return {"ready_s": 2.0, "note": "fake"}

    monkeypatch.setattr(bench_main, "_load_part", lambda _name: fake_part)
    monkeypatch.setattr(bench_main, "machine", lambda: _results()["machine"])
    report = tmp_path / "performance.md"
    argv = ["--only", "load", "--results", str(results_path), "--report", str(report)]
    assert bench_main.main(argv) == 0
    merged = json.loads(results_path.read_text(encoding="utf-8"))
    assert merged["ready_s"] == 2.0
    assert merged["fault_floor_ms"] == 0.8  # kept from the earlier run
    assert merged["targets"]["ready_s"]["met"] is False
    assert "fake" in report.read_text(encoding="utf-8")


def test_the_planner_and_the_year_are_judged_and_shown() -> None:
    """Issue 19's goals: a plan within 50 ms and 1 % of the oracle; the year's promises and its
    share of perfect foresight; each part says when it last ran."""
    spread = {"median": 20.0, "p95": 63.0, "max": 90.0}
    planner = {
        "instances": 200,
        "seed": 19,
        "load_average": [0.2, 0.4],
        "day_plan_ms": {"wall": spread | {"p95": 19.0}, "cpu": spread},
        "day_plan_budget_ms": {"wall": spread, "cpu": spread, "binding": 169},
        "gap_pct": {"median": 0.0, "p95": 0.1, "max": 0.8},
        "gap_budget_binds_pct": {"median": 0.0, "p95": 0.1, "max": 1.03, "instances": 116},
    }
    year = {
        "comparison": {
            "optimize_target_met_pct": {"value": 100.0},
            "optimize_nights_below_floor": {"value": 0},
            "optimize_pct_of_foresight": {"value": 98.0},
            "run_time_s": {"value": 46.2},
        }
    }
    results = _results(
        planner=planner,
        year=year,
        year_markdown="## A simulated year (issue 19)\n\nthe year's table",
        parts={"planner": {"finished_at": "2026-12-03T10:00:59+00:00", "git_commit": "abc"}},
    )
    text = bench_main.render(results)
    assert "| planner: 24 h plan p95 | 19.00 ms |  | ≤ 50.00 ms | met |" in text
    assert "| planner: 24 h plan, wear budget binding, p95 | 63.00 ms |" in text
    assert "wear budget binding, p95 | 63.00 ms |  | ≤ 50.00 ms | **missed** |" in text
    assert "tight budget, worst | 1.03 % |  | ≤ 1.00 % | **missed** |" in text
    assert "optimize's value, % of perfect foresight | 98.00 % |  | ≥ 95.00 % | met |" in text
    assert "## The planner (issue 19)" in text
    assert "the year's table" in text
    assert "planner 2026-12-03T10:00:59+00:00 (commit abc)" in text
