"""The charger board's lines: GPIO (against a stand-in for libgpiod 2), a shared file, none.

No test here touches a real GPIO chip: GpioLines runs against tests/vehicle/fake_gpiod.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from controller.errors import VehicleLinkError
from controller.vehicle.frames import LineInputs, LineOutputs
from controller.vehicle.lines import FILE_SIZE, GpioLines, SharedFileLines, UnwiredLines

from . import fake_gpiod
from .fake_gpiod import Direction, FakeChip, Value

REPO = Path(__file__).resolve().parents[2]
CHIP = "/dev/gpiochip0"
OFFSETS = {"plugged": 4, "k": 5, "d1": 17, "d2": 18, "contactors": 22, "lock": 23}
ALL_ON = LineOutputs(d1=True, d2=True, contactors=True, lock=True)


@pytest.fixture
def chip(monkeypatch: pytest.MonkeyPatch) -> FakeChip:
    """A fake gpiochip0 behind a fake ``gpiod`` module."""
    fake = FakeChip(CHIP)
    monkeypatch.setitem(sys.modules, "gpiod", fake_gpiod.make_module(fake))
    return fake


def board(active_low: tuple[str, ...] = ("plugged", "k")) -> GpioLines:
    """The board wiring the tests use: optocoupled (active-low) inputs."""
    return GpioLines(CHIP, OFFSETS, active_low=active_low)


# --- GPIO ---------------------------------------------------------------------------------------


def test_gpio_requests_every_line_once_with_outputs_inactive(chip: FakeChip) -> None:
    """open() requests inputs as inputs and outputs as inactive outputs, active-low per line."""
    lines = board()
    lines.open()
    lines.open()
    assert chip.requests == 1
    settings = chip.requested
    assert {o for o, s in settings.items() if s.direction is Direction.INPUT} == {4, 5}
    assert {o for o, s in settings.items() if s.direction is Direction.OUTPUT} == {17, 18, 22, 23}
    assert all(s.output_value is Value.INACTIVE for s in settings.values())
    assert {o for o, s in settings.items() if s.active_low} == {4, 5}
    assert not any(chip.levels[o] for o in (17, 18, 22, 23))


def test_gpio_reads_active_low_inputs_as_asserted_when_low(chip: FakeChip) -> None:
    """An active-low input pulled low reads as asserted; high reads as not."""
    lines = board()
    lines.open()
    chip.levels.update({4: True, 5: True})
    assert lines.read() == LineInputs(plugged=False, k=False)
    chip.levels.update({4: False, 5: True})
    assert lines.read() == LineInputs(plugged=True, k=False)
    chip.levels.update({4: False, 5: False})
    assert lines.read() == LineInputs(plugged=True, k=True)


def test_gpio_writes_outputs_and_skips_unchanged_writes(chip: FakeChip) -> None:
    """write() drives the wired outputs in one call and makes no call when nothing changed."""
    lines = board(active_low=("plugged", "k", "lock"))
    lines.open()
    request = chip_request(chip)
    lines.write(LineOutputs(d1=True))
    lines.write(LineOutputs(d1=True))
    assert len(request.set_calls) == 1
    assert (chip.levels[17], chip.levels[18], chip.levels[22]) == (True, False, False)
    assert chip.levels[23] is True  # lock is active-low: released = high
    lines.write(ALL_ON)
    assert (chip.levels[18], chip.levels[22], chip.levels[23]) == (True, True, False)


def test_gpio_close_turns_outputs_off_and_releases(chip: FakeChip) -> None:
    """close() drives every output inactive, then releases the lines."""
    lines = board()
    lines.open()
    request = chip_request(chip)
    lines.write(ALL_ON)
    lines.close()
    assert not any(chip.levels[o] for o in (17, 18, 22, 23))
    assert request.released
    assert chip.requested == {}
    lines.close()  # twice is harmless


def test_gpio_unwired_lines_read_false_and_are_not_driven(chip: FakeChip) -> None:
    """A GB/T board without k and d2: k reads False, d2 is not requested or driven."""
    lines = GpioLines(CHIP, {"plugged": 4, "d1": 17, "contactors": 22})
    lines.open()
    chip.levels[4] = True
    lines.write(ALL_ON)
    assert lines.read() == LineInputs(plugged=True, k=False)
    assert set(chip.requested) == {4, 17, 22}


def test_gpio_chip_missing_is_a_link_error_naming_it(chip: FakeChip) -> None:
    """A chip that does not exist: VehicleLinkError naming the chip, so the link retries."""
    lines = GpioLines("/dev/gpiochip9", OFFSETS)
    with pytest.raises(VehicleLinkError, match="gpiochip9"):
        lines.open()


def test_gpio_line_in_use_is_a_link_error(chip: FakeChip) -> None:
    """A line another process holds (EBUSY): VehicleLinkError."""
    board().open()
    with pytest.raises(VehicleLinkError, match="busy"):
        board().open()


def test_gpio_failing_chip_is_a_link_error(chip: FakeChip) -> None:
    """A chip that fails mid-run: read and write raise VehicleLinkError; close still releases."""
    lines = board()
    lines.open()
    chip.fail_io = True
    with pytest.raises(VehicleLinkError, match="cannot read"):
        lines.read()
    with pytest.raises(VehicleLinkError, match="cannot drive"):
        lines.write(ALL_ON)
    lines.close()
    assert chip_request(chip).released


def test_gpio_not_open_is_a_link_error(chip: FakeChip) -> None:
    """read() before open() is refused, not a crash."""
    with pytest.raises(VehicleLinkError, match="not open"):
        board().read()


def test_gpio_without_the_bindings_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """No gpiod package: the error says which extra to install."""
    monkeypatch.setitem(sys.modules, "gpiod", None)  # import gpiod raises ImportError
    with pytest.raises(VehicleLinkError, match=r"v2g-controller\[gpio\]"):
        board().open()


def test_gpio_with_the_v1_bindings_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpiod 1.x (another API) is refused with the version found."""
    old = types.ModuleType("gpiod")
    old.__dict__.update(__version__="1.5.4", Chip=object)
    monkeypatch.setitem(sys.modules, "gpiod", old)
    with pytest.raises(VehicleLinkError, match=r"1\.5\.4.*gpiod>=2\.1"):
        board().open()


@pytest.mark.parametrize(
    ("offsets", "active_low", "message"),
    [
        ({"plugged": 4, "k": 4}, (), "both at 4"),
        ({"plugged": 4, "relay": 5}, (), "relay"),
        ({"plugged": 4}, ("k",), "k"),
    ],
)
def test_gpio_wiring_mistakes_are_refused(
    offsets: dict[str, int], active_low: tuple[str, ...], message: str
) -> None:
    """Two lines on one offset, an unknown name or an active-low line without an offset."""
    with pytest.raises(VehicleLinkError, match=message):
        GpioLines(CHIP, offsets, active_low=active_low)


def chip_request(chip: FakeChip) -> fake_gpiod.FakeRequest:
    """The request the lines under test hold."""
    requests: list[tuple[str, str | None, fake_gpiod.FakeRequest]] = sys.modules["gpiod"].__dict__[
        "requests"
    ]
    return requests[-1][2]


# --- shared file --------------------------------------------------------------------------------


def test_shared_file_carries_lines_between_two_mappings(tmp_path: Path) -> None:
    """The charger's outputs reach the vehicle's mapping, and the vehicle's inputs the charger's."""
    path = tmp_path / "new" / "dir" / "lines"
    charger = SharedFileLines(path)
    vehicle = SharedFileLines(path, side="vehicle")
    charger.open()
    vehicle.open()
    assert path.stat().st_size == FILE_SIZE
    assert charger.read() == LineInputs()
    vehicle.plugged = True
    vehicle.k = True
    assert charger.read() == LineInputs(plugged=True, k=True)
    charger.write(LineOutputs(d1=True, lock=True))
    assert vehicle.outputs == LineOutputs(d1=True, lock=True)
    charger.close()
    assert vehicle.outputs == LineOutputs()  # the charger let go: everything off
    vehicle.close()
    reopened = SharedFileLines(path)
    reopened.open()
    assert reopened.read() == LineInputs()  # the car left: unplugged
    reopened.close()


def test_shared_file_sides_drive_only_their_own_lines(tmp_path: Path) -> None:
    """The vehicle side cannot drive outputs, the charger side cannot drive inputs."""
    charger = SharedFileLines(tmp_path / "lines")
    vehicle = SharedFileLines(tmp_path / "lines", side="vehicle")
    charger.open()
    vehicle.open()
    with pytest.raises(VehicleLinkError, match="outputs"):
        vehicle.write(ALL_ON)
    with pytest.raises(VehicleLinkError, match="plugged"):
        charger.plugged = True


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"hello", "expected 32 bytes, found 5"), (b"X" * FILE_SIZE, "expected it to start with")],
)
def test_shared_file_refuses_a_file_that_is_not_a_lines_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    """Another file at the path is refused and left as it was."""
    path = tmp_path / "lines"
    path.write_bytes(content)
    with pytest.raises(VehicleLinkError, match=message):
        SharedFileLines(path).open()
    assert path.read_bytes() == content


def test_shared_file_in_an_unwritable_place_is_a_link_error(tmp_path: Path) -> None:
    """A path that cannot be created is a VehicleLinkError naming it."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(VehicleLinkError, match="cannot open lines file"):
        SharedFileLines(blocker / "lines").open()


def test_shared_file_works_across_two_processes(tmp_path: Path) -> None:
    """A vehicle in another process plugs in, answers d1 with k, sees d2, and unplugs on exit."""
    path = tmp_path / "lines"
    vehicle_script = textwrap.dedent(
        f"""
        import time
        from controller.vehicle.lines import SharedFileLines
        lines = SharedFileLines({str(path)!r}, side="vehicle")
        lines.open()
        lines.plugged = True
        deadline = time.monotonic() + 20
        while not lines.outputs.d1 and time.monotonic() < deadline:
            time.sleep(0.005)
        lines.k = True
        while not lines.outputs.d2 and time.monotonic() < deadline:
            time.sleep(0.005)
        lines.close()
        """
    )
    charger = SharedFileLines(path)
    charger.open()
    child = subprocess.Popen([sys.executable, "-c", vehicle_script], cwd=REPO)
    try:
        assert wait_until(lambda: charger.read().plugged, 20.0)
        charger.write(LineOutputs(d1=True))
        assert wait_until(lambda: charger.read().k, 20.0)
        charger.write(LineOutputs(d1=True, d2=True))
        assert child.wait(timeout=20) == 0
        assert charger.read() == LineInputs(plugged=False, k=False)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        charger.close()


def wait_until(predicate: object, timeout_s: float) -> bool:
    """Poll a condition from a test thread."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


# --- none ---------------------------------------------------------------------------------------


def test_unwired_lines_never_read_plugged() -> None:
    """Without board lines nothing reads as plugged in, and writes go nowhere."""
    lines = UnwiredLines()
    lines.open()
    lines.write(ALL_ON)
    assert lines.read() == LineInputs()
    lines.close()


def test_shared_file_carries_the_emergency_stop(tmp_path: Path) -> None:
    """The simulated site presses E-stop on its side; the charger reads it on the other."""
    path = tmp_path / "lines"
    charger = SharedFileLines(path, side="charger")
    site = SharedFileLines(path, side="vehicle")
    charger.open()
    site.open()
    try:
        assert not charger.read().emergency_stop
        site.emergency_stop = True
        assert charger.read().emergency_stop
    finally:
        site.close()
        charger.close()
