"""Smoke run of the CAN ingest benchmark: it runs and reports sane figures (no thresholds)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import ingest


@pytest.mark.slow
def test_quick_ingest_reports_every_key(tmp_path: Path) -> None:
    result = ingest.run(workdir=tmp_path, quick=True)
    assert result["quick"] is True
    assert result["can_ingest_fps"] in (0, *ingest.QUICK_RATES_FPS)
    assert result["bare_fps"] in (0, *ingest.QUICK_RATES_FPS)
    assert result["ours_steps"]
    assert result["bare_steps"]
    for step in result["ours_steps"]:
        assert step["received"] <= step["sent"]
    ratio = result["can_cost_ratio"]
    assert math.isnan(ratio) or ratio > 0
    path = result["decode_path"]
    assert path["processed"] == path["frames"]  # every frame fully decoded in energy transfer
    assert path["our_us_per_frame"] > 0
    assert path["bare_us_per_frame"] > 0
    assert (tmp_path / "ingest.log").exists()
