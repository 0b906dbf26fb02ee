"""A controller process killed while discharging leaves the inverter at 0 W by itself."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from hil.inverter.profiles import SunSpec700Profile
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage

ROOT = Path(__file__).resolve().parents[2]
REVERT_S = 2

# The controller side: the real inverter link, discharging at 3 kW until it is killed.
CONTROLLER = """
import asyncio, sys
from controller.core.snapshots import PowerCommand
from controller.inverter.drivers import SunSpecDriver
from controller.inverter.link import ModbusInverterLink
from controller.inverter.transport import ModbusTransport, TcpEndpoint

async def main() -> None:
    transport = ModbusTransport(TcpEndpoint("127.0.0.1", int(sys.argv[1])), 1)
    link = ModbusInverterLink(transport, SunSpecDriver(transport, {revert}),
                              poll_interval_s=0.1, revert_timeout_s={revert})
    await link.apply(PowerCommand(-3000.0, enable=True))
    await link.run(lambda: None)

asyncio.run(main())
""".replace("{revert}", str(REVERT_S))


class HoldableClock:
    """The simulator's clock: real time until the test holds it, then wherever the test sets it."""

    def __init__(self) -> None:
        self.held_s: float | None = None

    def __call__(self) -> float:
        return time.monotonic() if self.held_s is None else self.held_s


def test_sigkill_mid_discharge_reverts_to_zero(tmp_path: Path) -> None:
    """SIGKILL mid-discharge: the inverter's own timer brings it to 0 W once its revert time has
    passed since the controller's last write, and not before (on the simulator's clock)."""
    script = tmp_path / "controller_side.py"
    script.write_text(CONTROLLER)

    async def scenario() -> None:
        clock = HoldableClock()
        stage = PowerStage()
        sim = InverterSimulator(SunSpec700Profile(stage), stage, clock=clock)
        port = await sim.start_tcp()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(port), cwd=ROOT
        )
        try:
            deadline = time.monotonic() + 20
            while abs(stage.actual_w + 3000) > 1:
                assert time.monotonic() < deadline, "the controller never started discharging"
                await asyncio.sleep(0.05)
            await asyncio.sleep(REVERT_S)  # the heartbeat keeps it going past one revert period
            assert abs(stage.actual_w + 3000) <= 1
            clock.held_s = time.monotonic()  # from here the simulator's time is the test's
            proc.kill()
            await proc.wait()
            last_write_s = stage.last_command_s  # the controller's last contact
            clock.held_s = last_write_s + REVERT_S - 0.1
            stage.advance(clock())
            assert abs(stage.target_w + 3000) <= 1
            assert abs(stage.actual_w + 3000) <= 1
            assert stage.reverts == 0
            clock.held_s = last_write_s + REVERT_S + 0.5  # the old bound: revert time + 0.5 s
            stage.advance(clock())
            assert (stage.target_w, stage.actual_w) == (0.0, 0.0), "inverter kept discharging"
            assert stage.reverts == 1
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await sim.stop()

    asyncio.run(scenario())
