"""A serial line for Modbus RTU without hardware: socat joins two pseudo-terminals."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType


class PtyPair:
    """``socat`` running two linked ptys: one end for the inverter, one for the controller."""

    def __init__(self, directory: Path) -> None:
        self.inverter_end = directory / "inverter-tty"
        self.controller_end = directory / "controller-tty"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PtyPair:
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("socat is not installed (apt-get install socat)")
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
                self.__exit__(None, None, None)
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
