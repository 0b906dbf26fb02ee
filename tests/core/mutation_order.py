"""A pytest plugin for `make mutation` only ([tool.mutmut] pytest_add_cli_args): fastest first.

mutmut runs the tests that cover a mutated function with ``-x``, in no particular order, so a
mutant costs the time until its first failing test. Sorted by the durations mutmut measured
(``mutmut-stats.json`` in the mutants/ directory it runs in; a new test counts as 0 s), a mutant
that a millisecond unit test kills does not wait for the property tests first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    durations_s: dict[str, float] = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations_s.get(item.nodeid, 0.0))
