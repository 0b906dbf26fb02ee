"""A slow device (every reply after 600 ms, Fronius-class) with the default poll (0.5 s), timeout
(1 s), retries and revert (3 s): the snapshot is never older than the core's 3 s stale limit,
and setup takes far fewer requests than it did (issue 16, item 6).

The bound is counted, not timed: the link holds one request at a time, so a snapshot's age when
the next one lands is at most the poll interval plus the requests between the two (the poll's
own and the writer's heartbeats), each taking the reply delay. Wall-clock time only paces it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from controller.core.policy import SafetyPolicy
from controller.core.snapshots import InverterState, PowerCommand
from controller.inverter.drivers import DeviceInfo, SunSpecDriver
from controller.inverter.link import ModbusInverterLink
from controller.inverter.transport import ModbusTransport, SerialEndpoint, TcpEndpoint
from hil.inverter.profiles import Profile, SunSpec100Profile, SunSpec700Profile
from hil.inverter.ptypair import PtyPair
from hil.inverter.simulator import InverterSimulator
from hil.inverter.stage import PowerStage

REPLY_DELAY_S = 0.6
POLL_INTERVAL_S = 0.5  # config.py InverterConfig defaults
REVERT_TIMEOUT_S = 3.0
STALE_AFTER_S = SafetyPolicy().inverter_stale_after_s
SNAPSHOTS = 3
# (profile, the driver's setup in requests at most, what it took before issue 16 item 6)
PROFILES: dict[str, tuple[Callable[[PowerStage], Profile], int, int]] = {
    # Discovery 8 (marker, 6 model headers, end), reads 3 (1; 702 with 704; 714's port types),
    # the revert armed (3 writes, 1 read-back), 0 W (1 write, 1 read-back): 17 requests,
    # 10.2 s. It was 15 before the chain had 714 (issue 17), 23 (13.8 s) before issue 16.
    "sunspec-700": (SunSpec700Profile, 17, 23),
    # Discovery 8, reads 2 (1; 120 with 124), revert and 0 W: 17 requests, 10.2 s. It was 25.
    "sunspec-100": (SunSpec100Profile, 17, 25),
}


class CountingDriver(SunSpecDriver):
    """The real driver, noting the transport's request count when each step completes."""

    def __init__(self, transport: ModbusTransport) -> None:
        super().__init__(transport, REVERT_TIMEOUT_S)
        self.transport = transport
        self.setup_requests: list[int] = []
        self.read_done_at: list[int] = []  # requests so far, as each read (a snapshot) completed
        self.enough = asyncio.Event()  # SNAPSHOTS + 1 reads done

    async def setup(self) -> DeviceInfo:
        before = self.transport.requests
        info = await super().setup()
        self.setup_requests.append(self.transport.requests - before)
        return info

    async def read(self, now_s: float) -> InverterState:
        state = await super().read(now_s)
        self.read_done_at.append(self.transport.requests)
        if len(self.read_done_at) > SNAPSHOTS:
            self.enough.set()
        return state


@pytest.mark.parametrize(
    ("profile_name", "link"),
    [
        ("sunspec-700", "tcp"),
        # About 20 s each at 600 ms a reply: in `make test-deep`, to keep `make test` in budget.
        pytest.param("sunspec-700", "rtu", marks=pytest.mark.deep),
        pytest.param("sunspec-100", "tcp", marks=pytest.mark.deep),
    ],
)
def test_a_slow_device_is_never_stale(
    profile_name: str, link: str, request: pytest.FixtureRequest
) -> None:
    """600 ms a reply: setup within its request budget, 2 requests a poll, and never more than
    4 requests (2.4 s) plus the poll interval between two snapshots: under 3 s."""
    make_profile, setup_budget, _before = PROFILES[profile_name]
    pty: PtyPair | None = request.getfixturevalue("pty_pair") if link == "rtu" else None

    async def scenario() -> None:
        stage = PowerStage()
        sim = InverterSimulator(make_profile(stage), stage)
        sim.reply_delay_s = REPLY_DELAY_S
        if pty is None:
            port = await sim.start_tcp()
            endpoint: TcpEndpoint | SerialEndpoint = TcpEndpoint("127.0.0.1", port)
        else:
            await sim.start_serial(str(pty.inverter_end), baudrate=115_200)
            endpoint = SerialEndpoint(str(pty.controller_end), baudrate=115_200)
        transport = ModbusTransport(endpoint, 1)  # the defaults: 1 s, 2 retries
        driver = CountingDriver(transport)
        link = ModbusInverterLink(
            transport,
            driver,
            poll_interval_s=POLL_INTERVAL_S,
            revert_timeout_s=REVERT_TIMEOUT_S,
        )
        task = asyncio.create_task(link.run(lambda: None))
        try:
            await link.apply(PowerCommand(-3000.0, enable=True))  # heartbeats compete too
            async with asyncio.timeout(60.0):
                await driver.enough.wait()
            state = link.snapshot()
            assert state is not None
            assert state.faults == ()
            assert link.writes >= 1
            # The heartbeat kept the device's own revert timer from running out: writes begin a
            # third of the revert time after the last one began, whatever the requests cost.
            # Two writes land at most a third of the revert time plus two requests (one in
            # flight, its own) apart: 2.2 s, leaving room for a busy reply's retry before the
            # 3 s timer runs out. The device's timer is wall-clock physics, so this is timed;
            # the 0.3 s is for a loaded machine's scheduling. It was 2.8 s (issue 16, HIL).
            gaps_s = [(b - a) / 1e9 for (a, _), (b, _) in itertools.pairwise(sim.write_log)]
            assert stage.reverts == 0, f"the device reverted; gaps between writes {gaps_s}"
            assert max(gaps_s) < REVERT_TIMEOUT_S / 3 + 2 * REPLY_DELAY_S + 0.3, gaps_s
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            assert driver.setup_requests == [driver.setup_requests[0]]  # one setup, no fault
            assert driver.setup_requests[0] <= setup_budget
            between = [b - a for a, b in itertools.pairwise(driver.read_done_at)]
            assert max(between) <= 4, between
            assert POLL_INTERVAL_S + max(between) * REPLY_DELAY_S < STALE_AFTER_S
            # A poll on its own (no heartbeat in between): two requests.
            before = transport.requests
            await driver.read(0.0)
            assert transport.requests - before == 2
        finally:
            await transport.close()
            await sim.stop()

    asyncio.run(scenario())
