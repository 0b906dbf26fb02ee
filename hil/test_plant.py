"""The plant on its own: the coupling's physics, the control requests, and the process."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import can
import pytest

import hil.plant as plant_module
from controller.config import load_register_map
from controller.vehicle.canbus import only_own_group
from controller.vehicle.lines import SharedFileLines
from hil.inverter.field import FieldChain100Profile
from hil.inverter.profiles import RegisterMapProfile, SunSpec100Profile, SunSpec700Profile
from hil.inverter.stage import PowerStage
from hil.mosquitto import free_port
from hil.plant import Plant, PlantClient, PlantConfig, PlantError, pick_can

ROOT = Path(__file__).resolve().parents[1]


def make_plant(time_factor: float = 1.0) -> Plant:
    return Plant(PlantConfig(time_factor=time_factor, soc_pct=50.0, capacity_kwh=40.0))


def run_stage(plant: Plant, power_w: float, seconds: float) -> None:
    plant.stage.set_enabled(True, 0.0)
    plant.stage.command(power_w, 0.0)
    plant.stage.advance(1.0)  # ramped up before the battery is coupled
    plant.couple(1.0)
    steps = 100
    for i in range(1, steps + 1):
        plant.couple(1.0 + seconds * i / steps)


def test_delivered_power_moves_the_battery_at_the_time_factor() -> None:
    """-3.7 kW for one real second at 3600x takes 3.7 kWh (9.25 % of 40 kWh) from the pack."""
    plant = make_plant(time_factor=3600)
    run_stage(plant, -3700.0, 1.0)
    status = plant.status()
    assert 50 - 9.25 - 0.3 < status["soc_pct"] < 50 - 9.25 + 0.3
    assert status["pack_current_a"] < 0
    assert 3650 < status["exported_wh"] < 3750
    assert status["imported_wh"] == 0
    assert status["lowest_soc_pct"] == status["soc_pct"]


def test_stage_dc_voltage_follows_the_pack() -> None:
    """The stage's DC voltage is the pack's terminal voltage, which charging raises."""
    plant = make_plant(time_factor=3600)
    run_stage(plant, 7400.0, 1.0)
    assert plant.stage.dc_voltage_v == pytest.approx(plant.battery.voltage_v)
    assert plant.battery.voltage_v > plant.battery.open_circuit_voltage_v  # charging current


def test_no_current_flows_with_the_contactors_open() -> None:
    """With the board's contactors open the pack does not move and the power is counted."""
    plant = make_plant(time_factor=3600)

    class OpenLines:
        emergency_stop = False
        insulation_ok = False  # the plant's IMD writes it

        class outputs:  # noqa: N801  mimics LineOutputs
            contactors = False

    plant.lines = OpenLines()  # type: ignore[assignment]  # .outputs.contactors and the IMD line
    run_stage(plant, -3700.0, 1.0)
    status = plant.status()
    assert status["soc_pct"] == 50.0
    assert status["power_without_contactors_s"] > 0.9


def test_the_vehicles_own_battery_bookkeeping_is_ignored() -> None:
    """The car's step() (from the reported output current) leaves the pack alone."""
    plant = make_plant()
    plant.battery.step(-100.0, 3600.0)
    assert plant.battery.soc_pct == 50.0


@pytest.mark.parametrize(
    "request_",
    [
        [],
        {"cmd": "reboot"},
        {"cmd": "vehicle", "set": {"stop_request": 1}},
        {"cmd": "vehicle", "set": {"teleport": True}},
        {"cmd": "vehicle"},
        {"cmd": "battery", "set": {"soc_pct": "full"}},
        {"cmd": "battery", "set": {"capacity_kwh": 10}},
        {"cmd": "battery", "set": {"soc_pct": True}},
        {"cmd": "inverter", "set": {"drop_replies": 1}},
        {"cmd": "inverter", "set": {"exception_code": True}},
        {"cmd": "inverter", "set": {"port": 1}},
        {"cmd": "inverter", "set": {"busy_probability": 1.5}},
        {"cmd": "inverter", "set": {"busy_probability": True}},
        {"cmd": "inverter", "trip": 5},
        {"cmd": "lines", "set": {"emergency_stop": True}},  # no lines file in this plant
        {"cmd": "insulation", "set": {"resistance_ohm": -1}},
        {"cmd": "insulation", "set": {"resistance_ohm": "low"}},
        {"cmd": "insulation", "set": {"resistance_ohm": True}},
        {"cmd": "insulation", "set": {"ohm": 1000}},
        {"cmd": "insulation"},
    ],
)
def test_bad_requests_are_refused_and_change_nothing(request_: object) -> None:
    """A malformed control request gets ok=false and leaves the plant as it was."""
    plant = make_plant()
    before = plant.status()
    answer = plant.handle(request_)
    assert answer["ok"] is False
    assert answer["error"]
    assert plant.status() == before
    assert not plant.faults.stop_request


def test_requests_inject_faults() -> None:
    """Vehicle faults, battery values and inverter faults are set at run time."""
    plant = make_plant()
    assert plant.handle({"cmd": "vehicle", "set": {"stop_request": True, "silence": True}})["ok"]
    assert plant.faults.stop_request
    assert plant.faults.silence
    assert plant.handle({"cmd": "battery", "set": {"temperature_c": 60}})["ok"]
    assert plant.battery.temperature_c == 60.0
    answer = plant.handle({"cmd": "inverter", "set": {"drop_replies": True}, "trip": "DC fault"})
    assert answer["ok"]
    assert plant.inverter.drop_replies
    assert answer["status"]["inverter_fault"] == "DC fault"
    assert (
        plant.handle({"cmd": "inverter", "clear_fault": True})["status"]["inverter_fault"] is None
    )


def test_the_imd_drives_the_boards_insulation_line(tmp_path: Path) -> None:
    """The plant's IMD sets the lines file's insulation_ok after its response time, and a
    resistance at or below 100 ohm/V of 500 V releases it (IEC 61851-23's fault limit)."""
    plant = make_plant()
    plant.lines = SharedFileLines(tmp_path / "lines", side="vehicle")
    plant.lines.open()
    charger = SharedFileLines(tmp_path / "lines", side="charger")
    charger.open()
    try:
        plant.couple(100.0)
        assert charger.read().insulation_ok is False  # released at power-on
        plant.couple(100.6)
        assert charger.read().insulation_ok is True
        answer = plant.handle({"cmd": "insulation", "set": {"resistance_ohm": 50_000}})
        assert answer["ok"]
        assert answer["status"]["insulation_ohm"] == 50_000
        plant.couple(100.7)
        assert charger.read().insulation_ok is True  # the IMD's response time
        plant.couple(101.3)
        assert charger.read().insulation_ok is False
        assert plant.status()["insulation_ok"] is False
    finally:
        charger.close()
        plant.lines.close()


def test_profiles_report_the_stage_dc_voltage() -> None:
    """SunSpec 103 DCV, 714's port DCV and a register map's dc_voltage carry the stage's DC
    voltage."""
    stage = PowerStage(dc_voltage_v=352.4)
    sunspec = SunSpec100Profile(stage)
    sunspec.refresh(stage, 0.0)
    assert sunspec.image.get_value(103, "DCV") == 352
    der = SunSpec700Profile(stage)
    der.refresh(stage, 0.0)
    assert der.image.get_raw(714, "Prt[0].DCV") == 3524  # DCV_SF -1
    regmap = RegisterMapProfile(
        load_register_map(ROOT / "config/inverters/v2glabs-bd7.yaml"), stage
    )
    regmap.refresh(stage, 0.0)
    register = regmap.map.registers[regmap.map.roles.dc_voltage or ""]
    assert regmap.registers[register.address - regmap.start_address] == 3524  # scale 0.1


def test_can_is_udp_multicast_without_vcan0(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without vcan0 the plant picks udp_multicast on a fresh group; with it, socketcan."""
    monkeypatch.setattr(plant_module, "vcan0_present", lambda: False)
    interface, channel = pick_can()
    assert interface == "udp_multicast"
    assert channel.startswith("239.74.")
    monkeypatch.setattr(plant_module, "vcan0_present", lambda: True)
    assert pick_can() == ("socketcan", "vcan0")


def test_udp_multicast_bus_hears_only_its_own_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plant's bus, limited to its group, does not hear another group on the same port."""
    monkeypatch.setattr(plant_module, "vcan0_present", lambda: False)
    _, mine = pick_can()
    _, other = pick_can()
    listener = can.Bus(interface="udp_multicast", channel=mine)
    talker = can.Bus(interface="udp_multicast", channel=other)
    try:
        only_own_group(listener)  # what the plant does to its bus
        talker.send(can.Message(arbitration_id=0x109, data=b"\x00" * 8, is_extended_id=False))
        assert listener.recv(0.3) is None
        same = can.Bus(interface="udp_multicast", channel=mine)
        try:
            same.send(can.Message(arbitration_id=0x108, data=b"\x01" * 8, is_extended_id=False))
            received = listener.recv(1.0)
        finally:
            same.shutdown()
        assert received is not None
        assert received.arbitration_id == 0x108
    finally:
        listener.shutdown()
        talker.shutdown()


def test_another_groups_frame_queued_before_the_option_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frame of another group that reached the socket between its bind and ``only_own_group``
    (other simulated pairs on the host are busy) is not handed to the new bus."""
    monkeypatch.setattr(plant_module, "vcan0_present", lambda: False)
    _, mine = pick_can()
    _, other = pick_can()
    listener = can.Bus(interface="udp_multicast", channel=mine)
    talker = can.Bus(interface="udp_multicast", channel=other)
    try:
        talker.send(can.Message(arbitration_id=0x109, data=b"\x00" * 8, is_extended_id=False))
        time.sleep(0.05)  # loopback delivery: the frame is queued on the listener's socket
        only_own_group(listener)
        assert listener.recv(0.3) is None
    finally:
        listener.shutdown()
        talker.shutdown()


def test_plant_process_answers_and_stops_on_sigterm() -> None:
    """`python -m hil.plant` comes up, takes a fault over its socket, and exits 0 on SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="plant-") as tmp:
        control = Path(tmp) / "ctl"
        interface, channel = pick_can()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hil.plant",
                "--can",
                f"{interface}:{channel}",
                "--tcp",
                f"127.0.0.1:{free_port()}",
                "--control",
                str(control),
                "--time-factor",
                "10",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            client = PlantClient(control)
            status = client.wait_ready(20)
            assert status["time_factor"] == 10
            assert status["can"] == f"{interface}:{channel}"
            status = client.request({"cmd": "vehicle", "set": {"stop_request": True}})
            assert status["ready"]
            with pytest.raises(PlantError, match="not a fault flag"):
                client.request({"cmd": "vehicle", "set": {"fly": True}})
            proc.send_signal(signal.SIGTERM)
            output, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, output
        assert f"CAN interface: {interface}" in output
        assert not control.exists()


def test_the_command_line_builds_a_field_device() -> None:
    """The field switches (issue 16) give the plant's inverter the device they describe."""
    config = plant_module.parse_args(
        [
            "--field-chain",
            "--base",
            "0",
            "--silent-at-40000",
            "--reply-delay-s",
            "0.6",
            "--busy-probability",
            "0.05",
            "--max-connections",
            "1",
            "--forget-revert-after-s",
            "6",
            "--free-power-w",
            "7400",
        ]
    )
    plant = Plant(config)
    sim, profile = plant.inverter, plant.inverter.profile
    assert isinstance(profile, FieldChain100Profile)
    assert profile.start_address == 0
    assert profile.free_power_w == 7400.0
    assert profile.forget_revert_after_s == 6.0
    assert sim.silent_at == [range(40000, 40002)]
    assert (sim.reply_delay_s, sim.busy_probability, sim.max_connections) == (0.6, 0.05, 1)
    assert plant.status()["revert_forgets"] == 0


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--field-chain", "--profile", "sunspec-700"], "--profile sunspec-100"),
        (["--base", "1000"], "--base is one of 0, 40000, 50000"),
        (["--profile", "v2glabs-bd7", "--base", "0"], "moves a SunSpec chain"),
        (["--silent-at-40000"], "--base 0 or 50000"),
        (["--busy-probability", "2"], "between 0 and 1"),
        (["--max-connections", "0"], "at least 1"),
        (["--forget-revert-after-s", "0"], "positive"),
    ],
)
def test_field_switches_that_do_not_fit_are_refused(
    argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        plant_module.parse_args(argv)
    assert exit_.value.code == 2
    assert problem in capsys.readouterr().err
