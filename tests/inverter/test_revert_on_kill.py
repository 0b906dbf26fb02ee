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


def test_sigkill_mid_discharge_reverts_to_zero(tmp_path: Path) -> None:
    """SIGKILL mid-discharge: the inverter's own timer brings it to 0 W within its revert time."""
    script = tmp_path / "controller_side.py"
    script.write_text(CONTROLLER)

    async def scenario() -> float:
        stage = PowerStage()
        sim = InverterSimulator(SunSpec700Profile(stage), stage)
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
            proc.kill()
            await proc.wait()
            killed_at = time.monotonic()
            while stage.actual_w != 0.0:
                assert time.monotonic() - killed_at < REVERT_S + 3, "inverter kept discharging"
                await asyncio.sleep(0.02)
            return time.monotonic() - killed_at
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await sim.stop()

    elapsed_s = asyncio.run(scenario())
    assert elapsed_s <= REVERT_S + 0.5  # within the revert time (loose bound for scheduling)
