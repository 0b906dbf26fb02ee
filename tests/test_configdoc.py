"""The technicians' config reference is the schema itself, rendered."""

from __future__ import annotations

from pathlib import Path

from controller.config import Config
from controller.configdoc import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_reference_is_current() -> None:
    """docs/configuration.md matches the schema (regenerate: python -m controller.configdoc)."""
    assert DOC.read_text() == render()


def test_every_section_is_documented() -> None:
    """Each top-level section of the config has its own heading."""
    text = render()
    for section in Config.model_fields:
        assert f"## `{section}" in text
