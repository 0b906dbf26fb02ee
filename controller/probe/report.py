"""What a probe prints: short lines for a technician, each problem with what to check.

Facts are indented under the heading of what was probed; a problem starts with ``PROBLEM:``
(so ``grep PROBLEM`` finds them) and is followed by ``check:`` lines. The exit status follows
from the problems found (0 none, 1 at least one).
"""

from __future__ import annotations

import sys
from typing import TextIO

OK = 0
PROBLEM = 1
USAGE = 2  # a bad config or command line: nothing was probed


class Report:
    """Lines for the technician on ``out``; counts the problems."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.problems: list[str] = []

    def heading(self, text: str) -> None:
        self._write(text)

    def fact(self, label: str, value: str) -> None:
        self._write(f"  {label + ':':<20} {value}")

    def note(self, text: str) -> None:
        self._write(f"  {text}")

    def problem(self, what: str, *checks: str) -> None:
        self.problems.append(what)
        self._write(f"PROBLEM: {what}")
        for check in checks:
            self._write(f"  check: {check}")

    @property
    def exit_code(self) -> int:
        return PROBLEM if self.problems else OK

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()
