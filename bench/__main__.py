"""`make bench`: run every benchmark, write bench/results.json and docs/performance.md.

    python -m bench                 # the full run (about 25 minutes: the nominal load is 10)
    python -m bench --quick         # a smoke run of the same code paths (figures meaningless)
    python -m bench --only latency  # one part; merged into an existing results.json
    python -m bench --only bytes --only fleet  # issue 20: byte budget (~6 min), fleet (~1 min)

Each part (bench/latency.py, bench/ingest.py, bench/load.py) runs the real daemon, simulators
and broker and returns its figures; this module adds the machine they ran on, compares them with
the targets of issues 8, 19 and 20, and renders the table. Figures are measured, never edited by
hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
REPORT = ROOT / "docs" / "performance.md"
PARTS = ("latency", "ingest", "load", "storage", "planner", "year", "bytes", "fleet")
YEAR_JSON = ROOT / "bench" / "year.json"
YEAR_PNG = ROOT / "bench" / "year.png"


@dataclass(frozen=True, slots=True)
class Target:
    key: str  # in results.json; "a.b" reads a nested value
    label: str
    unit: str
    limit: float
    at_most: bool  # True: the figure must be <= limit; False: >= limit
    floor_key: str | None = None  # the bare-library figure measured beside it, same run

    def value(self, results: dict[str, Any]) -> float | None:
        return _lookup(results, self.key)

    def met(self, results: dict[str, Any]) -> bool | None:
        value = self.value(results)
        if value is None:
            return None
        return value <= self.limit if self.at_most else value >= self.limit


# The targets of issue 8 (benchmarks, not timed tests). A p99 is shown beside the floor's p99.
TARGETS = (
    Target(
        "fault_reaction_ms.p99", "fault reaction p99", "ms", 10, True, "fault_floor_spread_ms.p99"
    ),
    Target(
        "setpoint_latency_ms.p99",
        "setpoint latency p99",
        "ms",
        20,
        True,
        "setpoint_floor_spread_ms.p99",
    ),
    Target("can_ingest_fps", "CAN ingest, zero drops", "frames/s", 8000, False),
    Target("can_cost_ratio", "CAN cost per frame / bare decode", "x", 1.5, True),
    Target("nominal_cpu_pct", "nominal CPU", "% of one core", 3, True),
    Target("rss_mb", "RSS", "MB", 60, True),
    Target("rss_growth_mb_per_h", "RSS growth", "MB/h", 1, True),
    Target("ready_s", "start to READY", "s", 1.5, True),
    # Issue 15: with every fsync slowed (200 ms, 1 s), against the normal disk of the same run.
    Target("storage_fault_p99_ratio", "slow fsync: fault reaction p99 / normal", "x", 1.5, True),
    Target("storage_setpoint_p99_ratio", "slow fsync: setpoint p99 / normal", "x", 1.5, True),
    Target("storage_trials_failed", "slow fsync: trials timed out", "trials", 0, True),
    Target("storage_watchdog_misses", "slow fsync: watchdog misses", "runs", 0, True),
    Target("storage_can_frames_dropped", "slow fsync: CAN frames dropped", "frames", 0, True),
    # Issue 19: the planner (bench/planner.py) and the simulated year (bench/year.py).
    Target("planner.day_plan_ms.wall.p95", "planner: 24 h plan p95", "ms", 50, True),
    Target(
        "planner.day_plan_budget_ms.wall.p95",
        "planner: 24 h plan, wear budget binding, p95",
        "ms",
        50,
        True,
    ),
    Target("planner.gap_pct.max", "planner: gap to the LP oracle, worst", "%", 1, True),
    Target(
        "planner.gap_budget_binds_pct.max",
        "planner: gap to the LP oracle, tight budget, worst",
        "%",
        1,
        True,
    ),
    Target(
        "year.comparison.optimize_target_met_pct.value",
        "year: departure target met (optimize)",
        "%",
        100,
        False,
    ),
    Target(
        "year.comparison.optimize_nights_below_floor.value",
        "year: nights the true SoC fell below the floor (optimize)",
        "nights",
        0,
        True,
    ),
    Target(
        "year.comparison.optimize_pct_of_foresight.value",
        "year: optimize's value, % of perfect foresight",
        "%",
        95,
        False,
    ),
    Target("year.comparison.run_time_s.value", "year: run time, 365 nights", "s", 120, True),
    # Issue 20: the byte budget (bench/bytes.py) and the fleet (bench/fleet.py).
    Target("bytes.idle.mb_per_day", "bytes: idle plugged car", "MB/day", 1, True),
    Target("bytes.charging.mb_per_day", "bytes: a night of charging", "MB/day", 5, True),
    Target("bytes.v2g.mb_per_day", "bytes: a night of V2G", "MB/day", 5, True),
    Target(
        "fleet.restart.busiest_second_pct",
        "fleet: reconnects in the busiest second after a broker restart",
        "% of the fleet",
        5,
        True,
    ),
)


# (label, ours, the bare path's spread, ours / floor) of bench/latency.py, all in results.json.
LATENCY_PATHS = (
    ("fault reaction", "fault_reaction_ms", "fault_floor_spread_ms", "fault_floor_ratio"),
    ("setpoint latency", "setpoint_latency_ms", "setpoint_floor_spread_ms", "setpoint_floor_ratio"),
)


def _lookup(results: dict[str, Any], key: str) -> float | None:
    node: Any = results
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def _command_output(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "not found"


def machine() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    cpu = "unknown"
    with Path("/proc/cpuinfo").open(encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith(("model name", "Model")):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("pymodbus", "python-can", "cantools", "aiomqtt", "paho-mqtt", "structlog"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "os": _command_output(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "mosquitto": _command_output([mosquitto, "-h"]),
        "packages": versions,
        "load_avg_at_start": list(os.getloadavg()),
        "git_commit": _command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured"
    if unit == "frames/s":
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def render(results: dict[str, Any]) -> str:
    """docs/performance.md from results.json."""
    info = results["machine"]
    rows = []
    for target in TARGETS:
        value = target.value(results)
        floor = _lookup(results, target.floor_key) if target.floor_key else None
        met = target.met(results)
        verdict = {True: "met", False: "**missed**", None: "not measured"}[met]
        sign = "≤" if target.at_most else "≥"
        rows.append(
            f"| {target.label} | {_fmt(value, target.unit)} {target.unit} | "
            f"{_fmt(floor, target.unit) + ' ' + target.unit if floor is not None else ''} | "
            f"{sign} {_fmt(target.limit, target.unit)} {target.unit} | {verdict} |"
        )
    spreads = []
    against_floor = []
    for label, ours_key, floor_key, ratio_key in LATENCY_PATHS:
        for key in (ours_key, floor_key):
            spread = results.get(key)
            if isinstance(spread, dict):
                spreads.append(
                    f"| {key} | {_fmt(spread.get('p50'), 'ms')} | "
                    f"{_fmt(spread.get('p99'), 'ms')} | {_fmt(spread.get('max'), 'ms')} | "
                    f"{spread.get('n', '')} |"
                )
        if isinstance(results.get(ours_key), dict):
            cells = []
            for quantile in ("p50", "p99"):
                ratio = _lookup(results, f"{ratio_key}.{quantile}")
                cells += [
                    _fmt(_lookup(results, f"{ours_key}.{quantile}"), "ms"),
                    _fmt(_lookup(results, f"{floor_key}.{quantile}"), "ms"),
                    "not measured" if ratio is None else f"{_fmt(ratio, 'x')} x",
                ]
            against_floor.append(f"| {label} | {' | '.join(cells)} |")
    storage_rows = []
    storage = results.get("storage")
    watchdog_s = storage.get("watchdog_s") if isinstance(storage, dict) else None
    for run in storage.get("runs", []) if isinstance(storage, dict) else []:
        fault, setpoint = run["fault_reaction_ms"], run["setpoint_latency_ms"]
        storage_rows.append(
            f"| {run['fsync_delay_ms']} | {_fmt(fault.get('p50'), 'ms')} | "
            f"{_fmt(fault.get('p99'), 'ms')} | {_fmt(fault.get('max'), 'ms')} | "
            f"{_fmt(run['fault_p99_ratio'], 'x')} | {_fmt(setpoint.get('p50'), 'ms')} | "
            f"{_fmt(setpoint.get('p99'), 'ms')} | {_fmt(run['setpoint_p99_ratio'], 'x')} | "
            f"{run['fault_trials_failed'] + run['setpoint_trials_failed']} | "
            f"{_fmt(run['watchdog_max_gap_s'], 's')} | {run['can_frames_dropped']} | "
            f"{run['fsyncs_per_hour']} |"
        )
    storage_section = (
        [
            "## Slow storage",
            "",
            "Every fsync of the daemon on its ledger's directory delayed by the first column",
            "(`python -m bench.storage`; 0 is the normal disk of the same run). Ratios are p99",
            "over the normal disk's p99; the watchdog gap is the longest between two pings with",
            f"`WATCHDOG_USEC` = {watchdog_s} s.",
            "",
            "| fsync ms | fault p50 ms | fault p99 ms | fault max ms | fault p99 ratio "
            "| setpoint p50 ms | setpoint p99 ms | setpoint p99 ratio | trials timed out "
            "| watchdog max gap s | CAN dropped | fsyncs/h |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *storage_rows,
            "",
            "fsyncs per hour in each steady state, normal disk (what wears the card):",
            "",
            "| state | fsyncs per hour |",
            "|---|---|",
            *(
                f"| {state} | {count} |"
                for state, count in (storage or {})
                .get("states", {})
                .get("fsyncs_per_hour", {})
                .items()
            ),
            "",
        ]
        if storage_rows
        else []
    )
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    notes = results.get("notes", {})
    quick = " (QUICK: a smoke run, the figures mean nothing)" if results.get("quick") else ""
    note_lines = [f"- **{part}**: {text}" for part, text in notes.items() if text]
    lines = [
        "# Performance",
        "",
        "For developers and reviewers. Every figure below was measured by `make bench`",
        "(`python -m bench`), which writes `bench/results.json` and this page; nothing here is",
        "typed by hand. How each figure is measured is in the docstrings of `bench/latency.py`,",
        "`bench/ingest.py`, `bench/load.py`, `bench/storage.py`, `bench/bytes.py` and",
        "`bench/fleet.py`, and summarised below.",
        "",
        f"Run: {results['finished_at']} ({results['duration_s'] / 60:.1f} min), "
        f"`{results['command']}`{quick}.",
        "",
        *_parts_line(results),
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['arch']}, {info['os']}, "
        f"kernel {info['kernel']}, Python {info['python']}; {info['mosquitto']}; {packages}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in info['load_avg_at_start'])}; "
        f"commit {info['git_commit']}.",
        "",
        "## Against the targets",
        "",
        "The floor is the bare library doing the same job, measured in the same run.",
        "",
        "| figure | measured | floor | target | |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## Latency spread",
        "",
        "| figure | p50 ms | p99 ms | max ms | trials |",
        "|---|---|---|---|---|",
        *spreads,
        "",
        "## Our code against the bare path",
        "",
        "The floor is the same path (CAN frame or MQTT publish to the write landing at the",
        "inverter simulator) done by bare python-can, cantools, paho-mqtt and pymodbus code in the",
        "same run; the ratio is ours over the floor, each quantile over the same quantile.",
        "",
        "| path | ours p50 ms | floor p50 ms | p50 ratio "
        "| ours p99 ms | floor p99 ms | p99 ratio |",
        "|---|---|---|---|---|---|---|",
        *against_floor,
        "",
        *storage_section,
        *_planner_section(results),
        *_bytes_section(results),
        *_fleet_section(results),
        *([str(results["year_markdown"]), ""] if results.get("year_markdown") else []),
        "## How each figure is measured",
        "",
        *note_lines,
        "",
        "The full JSON, with every informational figure, is `bench/results.json`.",
        "",
    ]
    return "\n".join(lines)


def _parts_line(results: dict[str, Any]) -> list[str]:
    """When each part last ran (a run with --only keeps the other parts' figures)."""
    parts = results.get("parts", {})
    if not parts:
        return []
    each = [
        f"{name} {part.get('finished_at', 'in an earlier run')}"
        + (f" (commit {part['git_commit']})" if part.get("git_commit") else "")
        for name, part in parts.items()
    ]
    return ["Each part's last run: " + "; ".join(each) + ".", ""]


def _planner_section(results: dict[str, Any]) -> list[str]:
    planner = results.get("planner")
    if not isinstance(planner, dict):
        return []

    def spread(key: str) -> str:
        wall = planner[key]["wall"]
        return f"{wall['median']} / {wall['p95']} / {wall['max']}"

    gaps, tight = planner["gap_pct"], planner["gap_budget_binds_pct"]
    return [
        "## The planner (issue 19)",
        "",
        f"`python -m bench.planner --instances {planner['instances']} --seed {planner['seed']}`"
        f" (load average {planner['load_average'][0]:g} at the start). One 24 h plan: 96 slots",
        "of 15 minutes, 60 kWh, 7.4 kW both ways, random prices, wear and events",
        "(docs/economics.md, Accuracy and speed).",
        "",
        "| figure | median | p95 | max |",
        "|---|---|---|---|",
        f"| 24 h plan, ms | {spread('day_plan_ms').replace(' / ', ' | ')} |",
        f"| 24 h plan, wear budget binding "
        f"({planner['day_plan_budget_ms']['binding']} of {planner['instances']}), ms | "
        f"{spread('day_plan_budget_ms').replace(' / ', ' | ')} |",
        f"| gap to the LP oracle, % ({planner['instances']} instances) | "
        f"{gaps['median']} | {gaps['p95']} | {gaps['max']} |",
        f"| gap to the LP oracle, tight budget, % ({tight['instances']} instances) | "
        f"{tight['median']} | {tight['p95']} | {tight['max']} |",
        "",
    ]


def _part_command(results: dict[str, Any], name: str) -> str:
    part = results.get("parts", {}).get(name, {})
    return str(part.get("command") or f"make bench BENCH_ARGS='--only {name}'")


def _bytes_section(results: dict[str, Any]) -> list[str]:
    """Issue 20's byte budget: one charger's bytes per day on the wire (bench/bytes.py)."""
    figures = results.get("bytes")
    if not isinstance(figures, dict) or "settings" not in figures:
        return []
    settings = figures["settings"]
    budget = settings["budget_mb_per_day"]
    labels = {
        "idle": ("idle plugged car, all day", budget["idle"]),
        "charging": ("a night of charging, 7 kW 23:00-05:00", budget["active"]),
        "v2g": ("a night of V2G: evening discharge, night charge", budget["active"]),
    }
    rows = []
    for name, (label, limit) in labels.items():
        day = figures.get(name)
        if not isinstance(day, dict):
            continue
        estimates = day["estimates"]
        up, down = day["bytes_per_day"]["up"], day["bytes_per_day"]["down"]
        verdict = "met" if day["mb_per_day"] <= limit else "**missed**"
        rows.append(
            f"| {label} | {up / 1e6:.3f} | {down / 1e6:.3f} | {day['mb_per_day']:.3f} | "
            f"≤ {limit:g} ({verdict}) | {day['telemetry_records_per_day']:,} | "
            f"{day['telemetry_mean_bytes']} | {day['keepalive_pings_per_day']:,} | "
            f"{estimates['tls13_records_bytes_per_day'] / 1e6:.3f} | "
            f"{estimates['tcp_ip_headers_bytes_per_day'] / 1e6:.3f} | "
            f"{estimates['total_with_tls_tcp_mb_per_day']:.3f} |"
        )
    kinds = []
    for name in labels:
        day = figures.get(name)
        if not isinstance(day, dict):
            continue
        cells = []
        for direction in ("up", "down"):
            for packet, tally in day[direction]["by_type"].items():
                cells.append(f"{direction} {packet} {tally['count']:,} / {tally['bytes']:,} B")
            for topic, tally in day[direction]["publish_by_topic"].items():
                cells.append(
                    f"{direction} PUBLISH {topic} {tally['count']:,} / {tally['bytes']:,} B"
                )
        kinds.append(f"| {name} | {'; '.join(cells)} |")
    check = figures.get("compression_check", {})
    counts = check.get("telemetry_records", {})
    scaled = any(
        isinstance(figures.get(n), dict) and figures[n].get("scaled_to_day") for n in labels
    )
    return [
        "## Byte budget (issue 20)",
        "",
        f"`{_part_command(results, 'bytes')}` (`python -m bench.bytes`). One charger's real",
        "aggregator link against mosquitto through a counting TCP proxy; a simulated day on a",
        "fake clock (details: the docstring of `bench/bytes.py`). MB are 10^6 bytes; up is",
        "charger to broker. MQTT framing is included; TLS and TCP/IP are **estimates** (TLS 1.3:",
        "22 B per record, one record per MQTT packet; TCP/IPv4 with timestamps: 52 B per",
        "segment, one per packet, ACK-only segments not counted; the TLS handshake not counted).",
        f"Telemetry period {settings['telemetry_period_s']:g} s, keepalive "
        f"{settings['keepalive_s']:g} s (pings computed from it: the run is compressed), control "
        f"tick {settings['tick_s']:g} s, topic prefix `{settings['topic_prefix']}`."
        + (" **Scaled to a day from a shorter run.**" if scaled else ""),
        "",
        "| day | up MB | down MB | MQTT MB/day | budget MB | telemetry records | "
        "bytes per telemetry | keepalive pings | TLS est. MB | TCP/IP est. MB | "
        "all est. MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Per kind (count / bytes, MQTT framing included, per simulated run):",
        "",
        "| day | packets |",
        "|---|---|",
        *kinds,
        "",
        f"Compression check: {check.get('window', '')}, {check.get('simulated_s', 0):g} s "
        f"simulated, telemetry records at real speed {counts.get('real_speed')}, compressed "
        f"{counts.get('compressed')} ({'equal' if check.get('equal') else '**different**'}).",
        "",
    ]


def _fleet_section(results: dict[str, Any]) -> list[str]:
    """Issue 20's fleet: 1,000 links against one broker (bench/fleet.py)."""
    fleet = results.get("fleet")
    if not isinstance(fleet, dict) or "restart" not in fleet:
        return []
    fan, steady, restart = fleet["fan_out"], fleet["steady"], fleet["restart"]
    ack = fan["ack_ms"]
    rss = fleet["rss_mb"]
    spread = fleet["reconnect_spread"]
    if spread.get("requested_s") is not None:
        spread_text = f"`aggregator.reconnect_spread_s` = {spread['requested_s']:g} s"
    else:
        spread_text = "the link's default `aggregator.reconnect_spread_s`"
    busiest_verdict = (
        "met" if restart["busiest_second_pct"] <= restart["goal_pct"] else ("**missed**")
    )
    return [
        "## A fleet against one broker (issue 20)",
        "",
        f"`{_part_command(results, 'fleet')}` (`python -m bench.fleet`). "
        f"{fleet['chargers']:,} real aggregator links with stub control loops in "
        f"{fleet['processes']} processes, one mosquitto, on this machine's "
        f"{results['machine']['cores']} cores (the links, the broker and the aggregator share "
        "them: a charger has its own CPU, so the fan-out times are mostly the bench's own links",
        "queueing for 2 cores; the broker's share is its CPU). Details: the docstring of",
        "`bench/fleet.py`.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| (a) one setpoint to every charger: ack p50 / p99 / max | {ack['p50']:,} / "
        f"{ack['p99']:,} / {ack['max']:,} ms |",
        f"| (a) until every ack arrived | {fan['all_acked_s']:g} s (publishing them took "
        f"{fan['publish_s']:g} s) |",
        *(
            [
                f"| (a) of which publish to the link accepting it, p50 / p99 | "
                f"{fan['delivered_ms']['p50']:,} / {fan['delivered_ms']['p99']:,} ms |",
                f"| (a) and accepted to the ack at the aggregator, p50 / p99 | "
                f"{fan['accepted_to_ack_ms']['p50']:,} / "
                f"{fan['accepted_to_ack_ms']['p99']:,} ms |",
            ]
            if "delivered_ms" in fan
            else []
        ),
        f"| (a) CPU used meanwhile | links {fan['cpu_s'].get('link_processes')} s, aggregator "
        f"{fan['cpu_s'].get('aggregator_process')} s, broker {fan['cpu_s'].get('broker')} s |",
        f"| (b) broker restart: reconnect spread | {spread_text} |",
        f"| (b) reconnects per second from the broker listening again | "
        f"{', '.join(str(n) for n in restart['arrivals_per_s'])} |",
        f"| (b) busiest one-second window | {restart['busiest_second']:,} "
        f"({restart['busiest_second_pct']:g} % of the fleet; goal ≤ {restart['goal_pct']:g} %: "
        f"{busiest_verdict}) |",
        f"| (b) until every charger was back | {restart['all_back_s']} s (broker down "
        f"{restart['broker_down_s']:g} s) |",
        f"| (c) steady state: publishes into the broker | {steady['publishes_per_s']:g} per s "
        f"(telemetry every {fleet['telemetry_period_s']:g} s) |",
        f"| (c) broker CPU | {steady['broker_cpu_pct']:g} % of one core over "
        f"{steady['window_s']:g} s (links {steady['cpu_pct'].get('link_processes')} %) |",
        f"| memory | broker {steady['broker_rss_mb']} MB; link processes "
        f"{', '.join(str(r) for r in rss['link_processes'])} MB "
        f"({rss['per_link_kb']:g} kB per link above the interpreter) |",
        "",
    ]


def _summary(module: object) -> str:
    """A part's docstring as one paragraph of the report (its own description of its method)."""
    text = str(getattr(module, "__doc__", "") or "")
    kept = [line for line in text.splitlines() if "python -m bench" not in line]
    return " ".join(" ".join(kept).split())


def _planner_part(*, workdir: Path, quick: bool) -> dict[str, Any]:
    """The planner's speed and its gap to the LP oracle (bench/planner.py)."""
    from bench import planner  # noqa: PLC0415  scipy: a development dependency

    del workdir
    return {"planner": planner.run(20 if quick else 200, 19)}


def _year_part(*, workdir: Path, quick: bool) -> dict[str, Any]:
    """The simulated year (bench/year.py); also writes bench/year.json and bench/year.png."""
    from bench import year  # noqa: PLC0415

    del workdir
    report = year.run(14 if quick else 365, year.DEFAULT_SEED, workers=min(2, os.cpu_count() or 1))
    if not quick:
        year.write_json(report, YEAR_JSON)
        year.write_plot(report, YEAR_PNG)
    figures = {key: report[key] for key in report if key not in ("net_per_night", "example_night")}
    return {"year": figures, "year_markdown": year.markdown(report)}


def _load_part(name: str) -> Callable[..., dict[str, Any]]:
    special: dict[str, Callable[..., dict[str, Any]]] = {
        "planner": _planner_part,
        "year": _year_part,
    }
    if name in special:
        return special[name]
    module = importlib.import_module(f"bench.{name}")
    runner: Callable[..., dict[str, Any]] = module.run
    return runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; figures not meaningful")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only these parts")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    parts = tuple(args.only) if args.only else PARTS
    results: dict[str, Any] = {}
    if args.only and args.results.exists():
        results = json.loads(args.results.read_text(encoding="utf-8"))
    started_s = time.monotonic()
    results["machine"] = machine()
    results.setdefault("notes", {})
    results.setdefault("parts", {})
    for name in parts:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        part_started_s = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as workdir:
            figures = _load_part(name)(workdir=Path(workdir), quick=args.quick)
        note = figures.pop("note", "") or _summary(importlib.import_module(f"bench.{name}"))
        results.update(figures)
        results["notes"][name] = note
        results["parts"][name] = {
            "command": f"make bench BENCH_ARGS='{'--quick ' if args.quick else ''}--only {name}'",
            "duration_s": round(time.monotonic() - part_started_s, 1),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git_commit": results["machine"]["git_commit"],
        }
        print(f"bench: {name} done: {json.dumps(figures)}", file=sys.stderr, flush=True)
    results["quick"] = args.quick
    bench_args = (["--quick"] if args.quick else []) + [
        f"--only {name}" for name in (args.only or ())
    ]
    results["command"] = "make bench" + (
        f" BENCH_ARGS='{' '.join(bench_args)}'" if bench_args else ""
    )
    results["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["duration_s"] = round(time.monotonic() - started_s, 1)
    results["targets"] = {
        target.key: {"limit": target.limit, "at_most": target.at_most, "met": target.met(results)}
        for target in TARGETS
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    args.report.write_text(render(results), encoding="utf-8")
    for target in TARGETS:
        value = target.value(results)
        print(
            f"{target.label:40} {_fmt(value, target.unit):>14} {target.unit:14} "
            f"{'met' if target.met(results) else 'MISSED'}"
        )
    print(f"wrote {args.results} and {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
