"""Fixtures shared by the daemon tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import NotifyListener


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    """The systemd side of sd_notify, on a short path (AF_UNIX paths stop at 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="v2g-", dir="/tmp") as directory:
        sock = NotifyListener(Path(directory))
        yield sock
        sock.close()
