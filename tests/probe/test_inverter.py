"""probe inverter against the simulated inverter (hil/inverter): what it shows, the problems it
names (wrong unit id, a gateway's 0x0B, nothing listening, no answer, too short a timeout, no
SunSpec registers, a fault), and the write test: it ends at 0 W, also on a second signal and
after a refused reconnect, says so when it cannot, and refuses while the daemon runs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from controller import probe as probe_cli
from controller.config import InverterConfig, load_register_map, parse_config
from controller.errors import InverterLinkError
from controller.inverter.drivers import InverterDriver
from controller.inverter.regmap import batches
from controller.inverter.transport import EXCEPTION_NAMES, ModbusTransport
from controller.probe import inverter as probe
from controller.probe.inverter import WriteTest, build_driver, probe_inverter, write_test
from controller.probe.report import Report
from controller.statusd import StatusServer
from hil.harness import until
from hil.inverter.field import FieldBehaviour, build_simulator
from hil.inverter.ptypair import PtyPair
from hil.inverter.stage import PowerStage
from hil.mosquitto import free_port
from tests.probe.support import (
    BD7_MAP,
    NO_DAEMON_ENV,
    REPO,
    cli,
    config_text,
    inverter,
    inverter_config,
)


async def run_probe(cfg: InverterConfig) -> tuple[bool, Report, str]:
    out = io.StringIO()
    report = Report(out)
    register_map = load_register_map(cfg.register_map) if cfg.register_map else None
    ok = await probe_inverter(cfg, report, register_map=register_map)
    return ok, report, out.getvalue()


@pytest.mark.parametrize(
    ("profile", "models"),
    [("sunspec-700", (1, 701, 702, 704, 713, 714)), ("sunspec-100", (1, 103, 120, 121, 123, 124))],
)
def test_a_sunspec_inverter_is_shown_with_its_models_values_and_revert_timer(
    profile: str, models: tuple[int, ...]
) -> None:
    async def main() -> None:
        async with inverter(profile) as sim:
            assert sim.port is not None
            ok, report, text = await run_probe(inverter_config(sim.port))
            assert ok, text
            assert report.exit_code == 0
            assert "base 40000:          'SunS' found" in text
            for model in models:
                assert f"  model {model}:" in text
            assert "Mn:                  V2G Labs" in text
            assert "revert timer\n  not armed" in text  # the simulator starts unarmed
            assert "faults:              none" in text
            assert sim.setpoint_writes == 0  # read-only

    asyncio.run(main())


def test_the_revert_timer_is_shown_armed_once_the_controller_armed_it() -> None:
    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            assert sim.port is not None
            cfg = inverter_config(sim.port, revert_timeout_s=30)
            transport = probe.transport_of(cfg)
            await build_driver(cfg, transport).setup()  # as the daemon does at start
            await transport.close()
            ok, _, text = await run_probe(cfg)
            assert ok, text
            assert "armed: WSet returns to 0 W after 30 s without a write" in text

    asyncio.run(main())


def test_over_rtu_the_base_is_found_and_the_chain_walked(tmp_path: Path) -> None:
    async def main() -> None:
        with PtyPair(tmp_path) as pty:
            sim = build_simulator("sunspec-700", PowerStage(), FieldBehaviour())
            await sim.start_serial(str(pty.inverter_end), baudrate=115_200)
            try:
                cfg = InverterConfig.model_validate(
                    {
                        "transport": "rtu",
                        "rtu": {"device": str(pty.controller_end), "baudrate": 115_200},
                        "timeout_s": 0.5,
                    }
                )
                ok, _, text = await run_probe(cfg)
                assert ok, text
                assert text.startswith(f"inverter: rtu:{pty.controller_end}@115200 unit 1")
                assert "  model 704:" in text
            finally:
                await sim.stop()

    asyncio.run(main())


def test_a_vendor_map_has_every_register_read_and_shown() -> None:
    async def main() -> None:
        async with inverter(str(BD7_MAP)) as sim:
            assert sim.port is not None
            cfg = inverter_config(sim.port, profile="register_map", register_map=str(BD7_MAP))
            ok, _, text = await run_probe(cfg)
            assert ok, text
            assert "register map:        V2G Labs BD-7, 13 registers" in text
            for name in ("ac_power", "dc_voltage", "run_state", "comm_timeout", "power_setpoint"):
                assert f"  {name}:" in text
            assert "dc_voltage:          380 V (input 1002)" in text
            assert "faults:              none" in text

    asyncio.run(main())


def test_field_chain_at_base_0_behind_a_silent_40000_is_found() -> None:
    behaviour = FieldBehaviour(chain=True, base=0, silent_at_40000=True)

    async def main() -> None:
        async with inverter("sunspec-100", behaviour) as sim:
            assert sim.port is not None
            ok, _, text = await run_probe(inverter_config(sim.port))
            assert ok, text
            assert "base 40000:          no answer" in text
            assert "base 0:              'SunS' found" in text
            assert "SunSpec base:        0" in text

    asyncio.run(main())


def test_a_wrong_unit_id_is_named() -> None:
    """pymodbus's server answers a unit id it does not serve with exception 0x04."""

    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            assert sim.port is not None
            ok, report, text = await run_probe(inverter_config(sim.port, unit_id=7))
            assert not ok
            assert report.exit_code == 1
            assert (
                "PROBLEM: the device answered 0x04 server device failure at 40000, 0, 50000" in text
            )
            assert "check: inverter.unit_id 7" in text

    asyncio.run(main())


def test_a_gateway_that_cannot_reach_the_unit_is_named() -> None:
    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            assert sim.port is not None
            sim.exception_code = 11  # gateway target device failed to respond
            ok, _, text = await run_probe(inverter_config(sim.port))
            assert not ok
            assert "base 40000:          exception 0x0B gateway target failed to respond" in text
            assert "PROBLEM: a Modbus gateway answered" in text
            assert "cannot reach unit 1" in text

    asyncio.run(main())


def test_nothing_listening_is_named() -> None:
    async def main() -> None:
        ok, _, text = await run_probe(inverter_config(free_port()))
        assert not ok
        assert "PROBLEM: cannot connect" in text
        assert "check: that its Modbus TCP server is switched on" in text

    asyncio.run(main())


def test_a_missing_serial_port_is_named(tmp_path: Path) -> None:
    cfg = InverterConfig.model_validate(
        {"transport": "rtu", "rtu": {"device": str(tmp_path / "ttyUSB9")}, "timeout_s": 0.3}
    )
    ok, _, text = asyncio.run(run_probe(cfg))
    assert not ok
    assert "PROBLEM: cannot open the serial port" in text
    assert f"check: the device {tmp_path / 'ttyUSB9'} exists" in text


def test_a_device_that_never_answers_is_told_from_a_slow_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(probe, "LONG_TIMEOUT_S", 1.0)

    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            assert sim.port is not None
            sim.drop_replies = True
            ok, _, text = await run_probe(inverter_config(sim.port, unit_id=3))
            assert not ok
            assert "PROBLEM: no answer from unit 3 on the network, not even after 1 s" in text
            assert "check: inverter.unit_id 3" in text
            sim.drop_replies = False
            sim.reply_delay_s = 0.5  # answers, but later than timeout_s 0.3
            ok, _, text = await run_probe(inverter_config(sim.port))
            assert not ok
            assert "PROBLEM: the inverter answers, but only after 0.5" in text
            assert "inverter.timeout_s 0.3 is too short" in text
            assert "check: set inverter.timeout_s to at least 1" in text

    asyncio.run(main())


def test_a_device_without_sunspec_registers_is_named() -> None:
    async def main() -> None:
        async with inverter(str(BD7_MAP)) as sim:  # a vendor-map device, probed as SunSpec
            assert sim.port is not None
            ok, _, text = await run_probe(inverter_config(sim.port))
            assert not ok
            assert "PROBLEM: the device answers, but has no such registers (0x02" in text
            assert "use profile: register_map" in text

    asyncio.run(main())


def test_a_fault_the_inverter_reports_is_a_problem() -> None:
    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            assert sim.port is not None
            sim.trip("over temperature")
            ok, _, text = await run_probe(inverter_config(sim.port))
            assert not ok
            assert "PROBLEM: the inverter reports a fault: inverter state FAULT" in text

    asyncio.run(main())


# -- the write test --------------------------------------------------------------------------


def test_the_write_test_holds_the_power_and_ends_at_0_w() -> None:
    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            assert sim.port is not None
            cfg = inverter_config(sim.port, revert_timeout_s=600)  # the timer cannot do it
            out = io.StringIO()
            task = asyncio.create_task(write_test(cfg, WriteTest(-3000.0, 1.5), Report(out)))
            assert await until(lambda: sim.stage.target_w == -3000.0, 10.0)
            await task
            text = out.getvalue()
            assert sim.stage.target_w == 0.0
            assert sim.stage.actual_w == 0.0
            assert "commanded -3000 W  measured -3000 W" in text
            assert "ended: 0 W commanded, stage disabled, measured 0 W" in text
            assert "PROBLEM" not in text

    asyncio.run(main())


def test_the_write_test_drives_a_vendor_map_inverter_too() -> None:
    async def main() -> None:
        async with inverter(str(BD7_MAP)) as sim:
            assert sim.port is not None
            cfg = inverter_config(
                sim.port, profile="register_map", register_map=str(BD7_MAP), revert_timeout_s=600
            )
            out = io.StringIO()
            test = WriteTest(4000.0, 1.5)
            bd7 = load_register_map(BD7_MAP)
            task = asyncio.create_task(write_test(cfg, test, Report(out), register_map=bd7))
            assert await until(lambda: sim.stage.target_w == 4000.0, 10.0)
            await task
            assert sim.stage.target_w == 0.0
            assert not sim.stage.enabled  # the map's run_enable written off
            assert "ended: 0 W commanded, stage disabled, measured 0 W" in out.getvalue()

    asyncio.run(main())


def test_a_cancelled_write_test_ends_at_0_w_and_stays_cancelled() -> None:
    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            assert sim.port is not None
            cfg = inverter_config(sim.port, revert_timeout_s=600)
            out = io.StringIO()
            task = asyncio.create_task(write_test(cfg, WriteTest(2500.0, 30.0), Report(out)))
            await asyncio.sleep(1.0)
            assert sim.stage.target_w == 2500.0
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert sim.stage.target_w == 0.0
            assert "write test interrupted" in out.getvalue()
            assert "ended: 0 W commanded" in out.getvalue()

    asyncio.run(main())


def test_a_write_test_cancelled_twice_still_ends_at_0_w() -> None:
    """The second cancel comes while the final 0 W is on its way to a slow inverter: the 0 W
    is waited for (shielded), and the cancellation goes on after it."""

    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            assert sim.port is not None
            cfg = inverter_config(sim.port, revert_timeout_s=600, timeout_s=1.0)
            out = io.StringIO()
            task = asyncio.create_task(write_test(cfg, WriteTest(2500.0, 30.0), Report(out)))
            assert await until(lambda: sim.stage.target_w == 2500.0, 10.0)
            sim.reply_delay_s = 0.3
            task.cancel()
            await asyncio.sleep(0.05)
            task.cancel()
            async with asyncio.timeout(15):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert sim.stage.target_w == 0.0, out.getvalue()
            assert "ended: 0 W commanded" in out.getvalue()

    asyncio.run(main())


def test_a_write_test_that_fails_midway_ends_at_0_w() -> None:
    reads = 0

    def failing(cfg: InverterConfig) -> Callable[[ModbusTransport], InverterDriver]:
        def build(transport: ModbusTransport) -> InverterDriver:
            driver = build_driver(cfg, transport)
            real_read = driver.read

            async def read(now_s: float) -> object:
                nonlocal reads
                reads += 1
                if reads == 2:
                    raise InverterLinkError("injected: no valid reply")
                return await real_read(now_s)

            driver.read = read  # type: ignore[method-assign,assignment]
            return driver

        return build

    async def main() -> None:
        async with inverter("sunspec-100") as sim:
            assert sim.port is not None
            cfg = inverter_config(sim.port, revert_timeout_s=600)
            out = io.StringIO()
            report = Report(out)
            test = WriteTest(3000.0, 10.0)
            await write_test(cfg, test, report, driver_factory=failing(cfg))
            text = out.getvalue()
            assert "PROBLEM: write test stopped: injected: no valid reply" in text
            assert "ended: 0 W commanded" in text
            assert report.exit_code == 1
            assert sim.stage.target_w == 0.0

    asyncio.run(main())


def test_the_final_0_w_is_tried_again_while_the_reconnect_is_refused() -> None:
    """The inverter goes away mid-test: the request fails, the reconnect is refused (the
    transport then waits out its backoff, failing at once), and the 0 W lands once it is back."""

    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            assert sim.port is not None
            port = sim.port
            cfg = inverter_config(port, revert_timeout_s=600)
            out = io.StringIO()
            task = asyncio.create_task(write_test(cfg, WriteTest(2500.0, 30.0), Report(out)))
            assert await until(lambda: sim.stage.target_w == 2500.0, 10.0)
            await sim.stop()  # connection closed, new ones refused
            assert await until(lambda: "write test stopped" in out.getvalue(), 10.0)
            await asyncio.sleep(0.5)  # the 0 W meets the refused reconnect and its backoff
            assert sim.stage.target_w == 2500.0
            await sim.start_tcp(port=port)
            async with asyncio.timeout(15):
                await task
            text = out.getvalue()
            assert sim.stage.target_w == 0.0, text
            assert "ended: 0 W commanded, stage disabled" in text

    asyncio.run(main())


def test_a_final_0_w_that_never_lands_says_the_revert_timer_ends_power(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(probe, "END_TIMEOUT_S", 1.0)

    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            assert sim.port is not None
            cfg = inverter_config(sim.port, revert_timeout_s=600)
            out = io.StringIO()
            report = Report(out)
            task = asyncio.create_task(write_test(cfg, WriteTest(2500.0, 30.0), report))
            assert await until(lambda: sim.stage.target_w == 2500.0, 10.0)
            await sim.stop()
            async with asyncio.timeout(10):
                await task
            text = out.getvalue()
            assert (
                "PROBLEM: could not command 0 W: the inverter's revert timer (600 s) is what "
                "ends power now" in text
            )
            assert "ended: 0 W commanded" not in text
            assert report.exit_code == 1

    asyncio.run(main())


def test_cli_write_test_asks_and_a_no_writes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            config = tmp_path / "config.yaml"
            config.write_text(
                config_text(
                    inverter=f"{{transport: tcp, tcp: {{host: 127.0.0.1, port: {sim.port}}}}}"
                ),
                encoding="utf-8",
            )
            args = ("probe", "inverter", "-c", str(config), "--write-test", "1000", "--for", "1")
            status, out, _ = await cli(*args, stdin=b"n\n")
            assert status == 1
            assert "Start the write test? [y/N]" in out
            assert "write test not confirmed: nothing was written" in out
            assert sim.setpoint_writes == 0
            status, out, err = await cli(*args, stdin=b"y\n")
            assert status == 0, out + err
            assert "commanded 1000 W" in out
            assert sim.stage.target_w == 0.0

    asyncio.run(main())


async def start_write_test(config: Path) -> asyncio.subprocess.Process:
    """The CLI's write test of -2000 W for 60 s, confirmed, as a subprocess."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller",
        "probe",
        "inverter",
        "-c",
        str(config),
        "--write-test",
        "-2000",
        "--for",
        "60",
        "--yes",
        cwd=REPO,
        env=NO_DAEMON_ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def write_config(tmp_path: Path, port: int | None) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        config_text(
            inverter=f"{{transport: tcp, tcp: {{host: 127.0.0.1, port: {port}}}, "
            "revert_timeout_s: 600}"
        ),
        encoding="utf-8",
    )
    return config


def test_cli_write_test_refuses_while_the_daemon_answers_its_status_socket() -> None:
    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            with tempfile.TemporaryDirectory(prefix="v2g-") as folder:
                socket_path = Path(folder) / "status.sock"
                config = Path(folder) / "config.yaml"
                config.write_text(
                    config_text(
                        inverter=f"{{transport: tcp, tcp: {{host: 127.0.0.1, port: {sim.port}}}}}",
                        status=f"{{socket_path: '{socket_path}'}}",
                    ),
                    encoding="utf-8",
                )
                args = ("probe", "inverter", "-c", str(config), "--write-test", "1000")
                daemon = StatusServer(socket_path, lambda command: {"state": "idle"})
                serving = asyncio.create_task(daemon.serve())
                try:
                    await asyncio.wait_for(daemon.listening.wait(), 5.0)
                    status, out, err = await cli(*args, "--for", "1", "--yes")
                finally:
                    serving.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await serving
                assert status == 1, out + err
                assert (
                    f"PROBLEM: the daemon is running (it answers on {socket_path}): stop it "
                    "first: sudo systemctl stop v2g-controller" in out
                )
                assert "Start the write test?" not in out
                assert daemon.answered == 1
                assert sim.setpoint_writes == 0
                # The daemon gone (no socket): the write test runs.
                assert not socket_path.exists()
                status, out, err = await cli(*args, "--for", "0.5", "--yes")
                assert status == 0, out + err
                assert "ended: 0 W commanded" in out
                # A stale socket that nobody answers on does not stop it either.
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
                    stale.bind(str(socket_path))
                    status, out, err = await cli(*args, "--for", "0.5", "--yes")
                assert status == 0, out + err
                assert sim.setpoint_writes > 0

    asyncio.run(main())


def test_a_status_socket_this_user_may_not_open_stops_the_write_test(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Root may open any socket, so the denial is put in os.access; the socket is real."""
    with tempfile.TemporaryDirectory(prefix="v2g-") as folder:
        path = Path(folder) / "status.sock"
        config = parse_config(config_text(status=f"{{socket_path: '{path}'}}"))
        assert probe_cli._daemon_check(config) is None  # no socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
            stale.bind(str(path))
            assert probe_cli._daemon_check(config) is None  # nobody answers
            monkeypatch.setattr(os, "access", lambda *_: False)
            refused = probe_cli._daemon_check(config)
    assert refused is not None
    assert refused.startswith("cannot tell whether the daemon is running: ")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_cli_ctrl_c_or_kill_during_the_write_test_ends_at_0_w(
    tmp_path: Path, stop: signal.Signals
) -> None:
    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            proc = await start_write_test(write_config(tmp_path, sim.port))
            async with asyncio.timeout(20):
                assert await until(lambda: sim.stage.target_w == -2000.0, 15.0)
                proc.send_signal(stop)
                out, err = await proc.communicate()
            assert proc.returncode == 1, out.decode() + err.decode()
            assert sim.stage.target_w == 0.0  # the probe's 0 W, long before the 600 s timer
            text = out.decode()
            assert "write test interrupted" in text
            assert "ended: 0 W commanded" in text
            assert "interrupted" in text.splitlines()[-1]

    asyncio.run(main())


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_cli_a_second_ctrl_c_or_kill_does_not_cut_the_final_0_w_short(
    tmp_path: Path, stop: signal.Signals
) -> None:
    async def main() -> None:
        async with inverter("sunspec-700") as sim:
            proc = await start_write_test(write_config(tmp_path, sim.port))
            async with asyncio.timeout(25):
                assert await until(lambda: sim.stage.target_w == -2000.0, 15.0)
                # A slow inverter: the final 0 W (reconnect, write, read back) takes a second or
                # so, and the second signal comes while it is on its way.
                sim.reply_delay_s = 0.3
                proc.send_signal(stop)
                await asyncio.sleep(0.05)
                proc.send_signal(stop)
                out, err = await proc.communicate()
            text = out.decode()
            assert proc.returncode == 1, text + err.decode()
            assert sim.stage.target_w == 0.0, text + err.decode()
            assert "ended: 0 W commanded" in text
            assert "Traceback" not in err.decode()

    asyncio.run(main())


def test_cli_reads_the_register_map_the_config_names(tmp_path: Path) -> None:
    async def main() -> None:
        async with inverter(str(BD7_MAP)) as sim:
            config = tmp_path / "config.yaml"
            config.write_text(
                config_text(
                    inverter=f"{{transport: tcp, tcp: {{host: 127.0.0.1, port: {sim.port}}}, "
                    f"profile: register_map, register_map: '{BD7_MAP}'}}"
                ),
                encoding="utf-8",
            )
            status, out, err = await cli("probe", "inverter", "-c", str(config))
            assert status == 0, out + err
            assert "register map:        V2G Labs BD-7, 13 registers" in out

    asyncio.run(main())


def test_cli_bad_arguments_and_configs_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(config_text(), encoding="utf-8")
    broken = tmp_path / "broken.yaml"
    broken.write_text("site: {}\n", encoding="utf-8")

    async def main() -> None:
        for args in (
            ("--write-test", "1000"),  # without --for
            ("--write-test", "1000", "--for", "0"),
            ("--write-test", "nan", "--for", "5"),
            ("--write-test", "1000", "--for", "601"),
        ):
            status, _, err = await cli("probe", "inverter", "-c", str(config), *args)
            assert status == 2, args
            assert "Traceback" not in err
        status, _, err = await cli("probe", "inverter", "-c", str(broken))
        assert status == 2
        assert "Traceback" not in err

    asyncio.run(main())


def test_help_reads_like_a_man_page() -> None:
    async def main() -> None:
        status, out, _ = await cli("probe", "inverter", "--help")
        assert status == 0
        assert "Read-only, unless --write-test is given" in out
        assert "examples:\n  v2g-controller probe inverter -c" in out

    asyncio.run(main())


def test_the_names_the_probe_shares_with_the_inverter_package_are_public() -> None:
    """The probe reads a vendor map in the driver's batches and names exception codes as the
    transport does, through their public names."""
    bd7 = load_register_map(BD7_MAP)
    reads = batches(bd7, bd7.registers)
    assert sorted(name for *_, names in reads for name in names) == sorted(bd7.registers)
    assert EXCEPTION_NAMES[2] == "illegal data address"
    assert probe.exception_name(2) == "illegal data address"
    assert probe.exception_name(0x55) == "unknown"
