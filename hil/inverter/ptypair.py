"""A serial line for Modbus RTU without hardware: socat joins two pseudo-terminals."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType


class PtyPair:
    """``socat`` running two linked ptys: one end for the inverter, one for the controller.

    ``vanish()`` takes the line away mid-run, as a pulled USB-RS485 adapter does, and
    ``restore()`` brings it back on the same two paths (new ptys behind them).
    """

    def __init__(self, directory: Path) -> None:
        self.inverter_end = directory / "inverter-tty"
        self.controller_end = directory / "controller-tty"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PtyPair:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop(kill=False)

    def vanish(self) -> None:
        """The line disappears at once: socat is killed (SIGKILL, no clean-up of its own), both
        ptys hang up, and the two paths are removed, so a reopen fails with "no such file"
        (the dangling links are removed rather than left to a reused /dev/pts number)."""
        self._stop(kill=True)
        for end in (self.inverter_end, self.controller_end):
            end.unlink(missing_ok=True)

    def restore(self) -> None:
        """The line comes back on the same paths (new ptys, so both ends must reopen)."""
        if self._proc is not None:
            raise RuntimeError("the pty pair is still there")
        self._start()

    def _start(self) -> None:
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("socat is not installed (apt-get install socat)")
        for end in (self.inverter_end, self.controller_end):
            end.unlink(missing_ok=True)  # left dangling by a killed socat
        self._proc = subprocess.Popen(
            [
                socat,
                f"pty,raw,echo=0,link={self.inverter_end}",
                f"pty,raw,echo=0,link={self.controller_end}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while not (self.inverter_end.exists() and self.controller_end.exists()):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self._stop(kill=False)
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)

    def _stop(self, *, kill: bool) -> None:
        if self._proc is None:
            return
        if kill:
            self._proc.kill()
        else:
            self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
