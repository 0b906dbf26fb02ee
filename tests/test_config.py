"""The technician's config: every problem reported at once, located, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.cli import main
from controller.config import Config, json_schema, load_config, parse_config
from controller.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.yaml"

MINIMAL = """\
site:
  site_id: home-1
  charger_id: c1
vehicle:
  protocol: chademo
inverter:
  transport: tcp
  tcp:
    host: 192.0.2.10
aggregator:
  enabled: false
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    return [(p.line, p.path, p.message) for p in info.value.problems]


def test_example_config_is_valid() -> None:
    """config/example.yaml, as shipped, validates."""
    config = load_config(EXAMPLE)
    assert config.site.site_id == "home-0421"
    assert config.owner.departure is not None
    assert config.owner.departure.time.hour == 7


def test_minimal_config_takes_safe_defaults() -> None:
    """Omitted sections take their documented, conservative defaults."""
    config = parse_config(MINIMAL)
    assert config.owner.soc_floor_pct == 40.0
    assert config.fallback.policy == "idle"
    assert config.vehicle.bitrate_bps == 500_000
    assert config.inverter.timeout_s == 1.0
    assert config.inverter.retries == 2
    # Issue 16, item 13: after a kill the inverter pushes until its own timer runs out, into a
    # car whose BMS stopped within about a second: short by default (heartbeat every second).
    assert config.inverter.revert_timeout_s <= 3.0
    assert load_config(EXAMPLE).inverter.revert_timeout_s <= 3.0


def test_gbt_defaults_to_250_kbit() -> None:
    """GB/T 27930 runs at 250 kbit/s (J1939-11) unless the bitrate is given."""
    config = parse_config(MINIMAL.replace("chademo", "gbt27930"))
    assert config.vehicle.bitrate_bps == 250_000


def test_config_is_frozen() -> None:
    """A loaded config cannot be changed by the code that reads it."""
    config = parse_config(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        config.owner.__setattr__("soc_floor_pct", 5.0)


def test_three_mistakes_give_three_located_messages() -> None:
    """Three different mistakes are all reported, each with its line and key."""
    text = MINIMAL.replace("protocol: chademo", "protocol: ccs2").replace(
        "    host: 192.0.2.10", "    host: 192.0.2.10\n    prot: 502"
    )
    text += "owner:\n  soc_floor_pct: 150\n"
    found = problems(text)
    assert [(line, path) for line, path, _ in found] == [
        (5, "vehicle.protocol"),
        (10, "inverter.tcp.prot"),
        (14, "owner.soc_floor_pct"),
    ]
    assert "found 'ccs2'" in found[0][2]
    assert "did you mean 'port'" in found[1][2]
    assert "less than or equal to 100" in found[2][2]
    assert "found 150" in found[2][2]


def test_duplicate_key_is_an_error() -> None:
    """A key given twice is rejected, naming both lines; the second value is not used."""
    found = problems(MINIMAL + "owner:\n  soc_floor_pct: 30\n  soc_floor_pct: 35\n")
    assert found == [
        (14, "owner.soc_floor_pct", "duplicate key (first at line 13); expected each key once")
    ]


def test_duplicate_section_is_an_error() -> None:
    """A whole section given twice is rejected."""
    found = problems(MINIMAL + "aggregator:\n  enabled: true\n")
    assert found[0][:2] == (12, "aggregator")
    assert "duplicate key (first at line 10)" in found[0][2]


def test_unknown_top_level_section_lists_known_ones() -> None:
    """An unknown section is rejected, with a hint to the nearest real one."""
    found = problems(MINIMAL + "saftey:\n  ramp_w_per_s: 100\n")
    assert found == [(12, "saftey", "unknown key; did you mean 'safety'?")]


def test_missing_required_section_is_reported() -> None:
    """A missing required section is named."""
    text = MINIMAL.replace("vehicle:\n  protocol: chademo\n", "")
    found = problems(text)
    assert found == [(1, "vehicle", "required key is missing")]


def test_missing_required_key_points_at_its_section() -> None:
    """A missing key is located at the line of the section it belongs in."""
    found = problems(MINIMAL.replace("  charger_id: c1\n", ""))
    assert found == [(1, "site.charger_id", "required key is missing")]


def test_wrong_type_says_what_was_expected_and_found() -> None:
    """A wrong type is reported with the expected type and the value found."""
    found = problems(MINIMAL + "safety:\n  ramp_w_per_s: fast\n")
    assert found[0][:2] == (13, "safety.ramp_w_per_s")
    assert "expected a valid number" in found[0][2]
    assert "found 'fast'" in found[0][2]


def test_cross_field_rule_reports_both_values() -> None:
    """A floor above the ceiling is rejected, not swapped or clamped."""
    found = problems(MINIMAL + "owner:\n  soc_floor_pct: 80\n  soc_ceiling_pct: 60\n")
    assert found[0][1] == "owner"
    assert "floor 80 and ceiling 60" in found[0][2]


def test_transport_section_must_match() -> None:
    """transport: rtu without an rtu section is rejected."""
    found = problems(MINIMAL.replace("transport: tcp", "transport: rtu"))
    assert found[0][1] == "inverter"
    assert "expected a 'rtu:' section" in found[0][2]


def test_unknown_timezone_is_rejected() -> None:
    """A misspelt time zone is an error, not UTC."""
    found = problems(
        MINIMAL.replace("  charger_id: c1\n", "  charger_id: c1\n  timezone: Europe/Amsterdm\n")
    )
    assert found[0][1] == "site"
    assert "Europe/Amsterdm" in found[0][2]


def test_unquoted_time_of_day_is_not_base_60() -> None:
    """An unquoted 19:30 is a time of day, not YAML 1.1's sexagesimal integer 1170."""
    text = MINIMAL + "owner:\n  departure:\n    time: 19:30\n    target_soc_pct: 80\n"
    config = parse_config(text)
    assert config.owner.departure is not None
    assert (config.owner.departure.time.hour, config.owner.departure.time.minute) == (19, 30)


def test_yaml_syntax_error_has_a_line() -> None:
    """Broken YAML is reported with its line, not a parser traceback."""
    found = problems(MINIMAL + "owner:\n  soc_floor_pct: [30\n")
    assert len(found) == 1
    line, _, message = found[0]
    assert line is not None
    assert line >= 13
    assert message.startswith("invalid YAML")


def test_tab_indentation_is_a_clear_error() -> None:
    """A tab in the indentation is a YAML error with a line number."""
    found = problems(MINIMAL + "owner:\n\tsoc_floor_pct: 30\n")
    assert found[0][0] == 13
    assert "invalid YAML" in found[0][2]


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "the file is empty"), ("- a\n- b\n", "expected a mapping at the top, found a list")],
)
def test_empty_or_non_mapping_config(text: str, message: str) -> None:
    """An empty file or a top-level list is rejected with a reason."""
    assert message in problems(text)[0][2]


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is one clear problem."""
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")


def test_binary_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 text is rejected with a reason."""
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    """A directory given as the config is rejected with a reason."""
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_either_valid_or_a_config_error(text: str) -> None:
    """Arbitrary text never escapes as anything but ConfigError."""
    error: ConfigError | None = None
    try:
        parse_config(text)
    except ConfigError as caught:
        error = caught
    if error is not None:
        assert error.problems
        assert all(str(p) for p in error.problems)


@settings(max_examples=200, deadline=None)
@given(
    floor=st.floats(allow_nan=True, allow_infinity=True),
    ramp=st.one_of(st.integers(), st.text(max_size=10), st.booleans(), st.none()),
)
def test_random_values_are_validated_not_clamped(floor: float, ramp: object) -> None:
    """Values out of range are rejected; accepted ones are taken exactly as written."""
    text = (
        MINIMAL
        + f"owner:\n  soc_floor_pct: {floor!r}\nsafety:\n  ramp_w_per_s: {json.dumps(ramp)}\n"
    )
    try:
        config = parse_config(text)
    except ConfigError:
        return
    assert 0 <= config.owner.soc_floor_pct <= 100
    assert config.owner.soc_floor_pct == floor
    assert config.safety.ramp_w_per_s > 0


def test_schema_describes_every_section() -> None:
    """The JSON Schema names every top-level section and forbids unknown keys."""
    schema = json_schema()
    assert set(schema["properties"]) == set(Config.model_fields)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"site", "vehicle", "inverter", "aggregator"}


def test_cli_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    """check-config on the example exits 0 and says OK."""
    assert main(["check-config", str(EXAMPLE)]) == 0
    assert "OK" in capsys.readouterr().out


def test_cli_check_config_reports_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints one line per problem, with file and line, and exits 2."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        MINIMAL.replace("chademo", "ccs2").replace("enabled: false", "enabled: maybe")
        + "owner:\n  soc_floor_pct: -1\n"
    )
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "3 problems found"
    assert err[0].startswith(f"{path}:5: vehicle.protocol:")
    assert err[1].startswith(f"{path}:11: aggregator.enabled:")
    assert err[2].startswith(f"{path}:13: owner.soc_floor_pct:")


def test_cli_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    """`schema` prints a JSON Schema an editor can load."""
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].endswith("2020-12/schema")


def test_installed_command_rejects_bad_config_without_traceback(tmp_path: Path) -> None:
    """`run` with a bad config exits 2 with located messages, starts nothing, no traceback."""
    path = tmp_path / "bad.yaml"
    path.write_text(MINIMAL + "owner:\n  soc_floor_pct: lots\n")
    result = subprocess.run(
        [sys.executable, "-m", "controller", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{path}:13: owner.soc_floor_pct:" in result.stderr
    assert result.stdout == ""
