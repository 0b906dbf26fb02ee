"""Fixtures for inverter tests: a pty pair for RTU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.inverter.ptypair import PtyPair


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    with PtyPair(tmp_path) as pair:
        yield pair
