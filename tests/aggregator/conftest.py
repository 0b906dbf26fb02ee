"""Fixtures for the aggregator tests: a real mosquitto broker, and a generated test PKI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.mosquitto import Mosquitto, TlsFiles, find_mosquitto, make_tls_files


@pytest.fixture
def need_mosquitto() -> None:
    """For a test that starts its own broker: skipped where mosquitto is missing (a failure
    under CI=true, conftest.py)."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (make test installs it)")


@pytest.fixture
def broker(tmp_path: Path, need_mosquitto: None) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path) as running:
        yield running


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki"))
