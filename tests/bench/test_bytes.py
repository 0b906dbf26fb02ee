"""The byte budget bench: its MQTT meter, and a short run of it against a real mosquitto.

No thresholds on the figures (``make bench`` judges the budget): the run's shape, and counts
that can only come out this way if every packet was parsed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.__main__ as bench_main
from bench import bytes as bytes_bench
from bench.mqttmeter import MqttMeter
from hil.mosquitto import find_mosquitto


def _publish(topic: str, payload: bytes, *, alias: int | None = None) -> bytes:
    """An MQTT 5 PUBLISH, QoS 1 (MQTT 5.0 §3.3), with an optional Topic Alias property."""
    name = topic.encode()
    props = b"" if alias is None else b"\x23" + alias.to_bytes(2, "big")
    body = len(name).to_bytes(2, "big") + name + b"\x00\x07" + bytes([len(props)]) + props
    body += payload
    assert len(body) < 128  # one length byte is enough for these
    return bytes([0x32, len(body)]) + body


def test_the_meter_counts_packets_by_type_and_topic_across_reads() -> None:
    meter = MqttMeter()
    big = _publish("v2g/a/b/telemetry", b"x" * 40, alias=3)
    aliased = _publish("", b"y" * 10, alias=3)  # the topic given by alias 3 only
    stream = big + b"\xc0\x00" + aliased + b"\x40\x02\x00\x07"  # + PINGREQ, PUBACK
    for i in range(0, len(stream), 5):  # arrives in pieces that cut every header
        meter.feed(stream[i : i + 5])
    summary = meter.summary()
    assert summary["bytes"] == len(stream)
    assert summary["by_type"] == {
        "PINGREQ": {"count": 1, "bytes": 2},
        "PUBACK": {"count": 1, "bytes": 4},
        "PUBLISH": {"count": 2, "bytes": len(big) + len(aliased)},
    }
    assert summary["publish_by_topic"] == {
        "telemetry": {"count": 2, "bytes": len(big) + len(aliased)}
    }


def test_a_long_remaining_length_is_read_as_a_variable_byte_integer() -> None:
    meter = MqttMeter()
    payload = b"z" * 300  # remaining length over 127: two length bytes (MQTT 5.0 §1.5.5)
    name = b"t/status"
    body = len(name).to_bytes(2, "big") + name + b"\x00\x01\x00" + payload
    length = len(body)
    packet = bytes([0x32, (length & 0x7F) | 0x80, length >> 7]) + body
    meter.feed(packet)
    assert meter.summary()["publish_by_topic"] == {"status": {"count": 1, "bytes": len(packet)}}


def test_pings_are_computed_from_the_keepalive() -> None:
    # Nothing for 95 s after the start: three pings at a 30 s keepalive; then 10 s gaps: none.
    times = [95.0 + 10 * i for i in range(5)]
    assert bytes_bench.pings_per_day(times, 0.0, 135.0, 30.0) == 3


def test_an_unknown_profile_is_refused_with_the_names_it_knows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown profile 'sleepy': expected one of idle"):
        bytes_bench.run(workdir=tmp_path, profiles=("sleepy",))


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_quick_run_measures_each_day_and_renders(tmp_path: Path) -> None:
    assert find_mosquitto() is not None, "mosquitto is not installed (make test installs it)"
    figures = bytes_bench.run(workdir=tmp_path, quick=True)
    assert figures["note"]
    result = figures["bytes"]
    for profile in bytes_bench.PROFILES:
        day = result[profile]
        assert day["connects"] == 1
        assert day["scaled_to_day"] is True  # an hour, scaled
        for direction in ("up", "down"):
            meter = day[direction]
            # Every byte the proxy carried was parsed into a whole packet.
            assert sum(t["bytes"] for t in meter["by_type"].values()) == meter["bytes"]
        assert day["up"]["by_type"]["CONNECT"]["count"] == 1
        assert day["down"]["by_type"]["CONNACK"]["count"] == 1
        assert day["telemetry_records_per_day"] > 0
        assert day["mb_per_day"] > 0
        assert day["estimates"]["tcp_ip_headers_bytes_per_day"] > 0
    # From 22:30 on, the charging night's setpoints come down and are acked one for one.
    charging = result["charging"]
    setpoints = charging["down"]["publish_by_topic"]["setpoint"]["count"]
    assert charging["up"]["publish_by_topic"]["ack"]["count"] == setpoints > 0
    assert "setpoint" not in result["idle"]["down"]["publish_by_topic"]
    assert result["compression_check"]["equal"] is True
    text = bench_main.render(_with_machine({"bytes": result}))
    assert "## Byte budget (issue 20)" in text
    assert "**Scaled to a day from a shorter run.**" in text


def _with_machine(results: dict[str, object]) -> dict[str, object]:
    return {
        **results,
        "machine": {
            "cpu": "test cpu",
            "cores": 2,
            "arch": "x86_64",
            "kernel": "6",
            "os": "Debian",
            "python": "3.11",
            "mosquitto": "mosquitto 2",
            "packages": {},
            "load_avg_at_start": [0.1, 0.2, 0.3],
            "git_commit": "abc",
        },
        "finished_at": "2026-12-03T00:00:00+00:00",
        "duration_s": 60.0,
        "command": "make bench",
    }


def test_a_stream_that_is_not_mqtt_is_still_counted_in_bytes() -> None:
    meter = MqttMeter()
    meter.feed(b"\x30\xff\xff\xff\xff\x01")  # a 5-byte remaining length: malformed
    meter.feed(b"more")
    summary = meter.summary()
    assert summary["bytes"] == 10
    assert summary["malformed"] is not None
    assert "variable byte integer" in summary["malformed"]
