"""The layer contract (docs/architecture.md), checked on every import in the source tree.

Every ``import`` and ``from ... import`` is read from the syntax tree, including those inside
functions (a lazy import is still a dependency). The rules:

* ``controller.core`` imports nothing of the project but itself;
* no link (``vehicle``, ``inverter``, ``aggregator``) imports another link, and the ledger and the
  aggregator link do not import each other (both use ``controller.storage``);
* links, the ledger and the storage never import the wiring (``app``, ``daemon``, ``control``,
  ``cli``): only the wiring puts links together;
* ``controller`` never imports ``hil``, ``bench`` or ``tests``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LINKS = ("controller.vehicle", "controller.inverter", "controller.aggregator")
WIRING = ("controller.app", "controller.daemon", "controller.control", "controller.cli")
OUTSIDE = ("hil", "bench", "tests")
# (importer prefix, imported prefix, why): an import matching a pair breaks the contract.
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    *(
        (link, other, "no link imports another link")
        for link in LINKS
        for other in LINKS
        if other != link
    ),
    ("controller.ledger", "controller.aggregator", "the ledger and the aggregator are independent"),
    ("controller.aggregator", "controller.ledger", "the ledger and the aggregator are independent"),
    *(
        (part, wiring, "only the wiring puts links together")
        for part in (*LINKS, "controller.ledger", "controller.storage", "controller.core")
        for wiring in WIRING
    ),
    *(("controller", outside, "controller never imports the simulators") for outside in OUTSIDE),
)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: Path, root: Path) -> str:
    """``controller/vehicle/link.py`` -> ``controller.vehicle.link``."""
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # ``from controller import vehicle`` imports a package
                yield node.lineno, f"{target}.{alias.name}"


def violations(root: Path) -> list[str]:
    """Every import under ``root/controller`` that breaks the contract, as "file:line: why"."""
    found: list[str] = []
    for path in sorted((root / "controller").rglob("*.py")):
        module = module_name(path, root)
        for line, target in imports_of(path, module):
            if _within(module, "controller.core") and _within(target, "controller"):
                if not _within(target, "controller.core"):
                    found.append(
                        f"{path.relative_to(root)}:{line}: {module} imports {target}: the core "
                        "imports nothing of the project but itself"
                    )
                continue
            for importer, imported, why in FORBIDDEN:
                if _within(module, importer) and _within(target, imported):
                    found.append(
                        f"{path.relative_to(root)}:{line}: {module} imports {target}: {why}"
                    )
                    break
    return sorted(set(found))


def test_the_source_tree_keeps_the_layer_contract() -> None:
    assert violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"controller/vehicle/link.py": "from controller.inverter.transport import X\n"},
            "controller/vehicle/link.py:1: controller.vehicle.link imports "
            "controller.inverter.transport: no link imports another link",
        ),
        (
            {"controller/core/rules.py": "def f():\n    import controller.config\n"},
            "controller/core/rules.py:2: controller.core.rules imports controller.config: the "
            "core imports nothing of the project but itself",
        ),
        (
            {"controller/ledger/ledger.py": "from ..aggregator import messages\n"},
            "controller/ledger/ledger.py:1: controller.ledger.ledger imports "
            "controller.aggregator: the ledger and the aggregator are independent",
        ),
        (
            {"controller/aggregator/link.py": "from controller import daemon\n"},
            "controller/aggregator/link.py:1: controller.aggregator.link imports "
            "controller.daemon: only the wiring puts links together",
        ),
        (
            {"controller/app.py": "import hil.plant\n"},
            "controller/app.py:1: controller.app imports hil.plant: controller never imports "
            "the simulators",
        ),
    ],
)
def test_a_forbidden_import_is_reported_with_its_place_and_rule(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    """The check fails on a deliberately added forbidden import (issue 18)."""
    assert expected in violations(_tree(tmp_path, files))


def test_allowed_imports_are_not_reported(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "controller/core/rules.py": "from controller.core import snapshots\n",
            "controller/vehicle/link.py": "from controller.links import Wake\n",
            "controller/ledger/ledger.py": "from controller.storage import db\n",
            "controller/app.py": "from controller.vehicle import link\nimport controller.daemon\n",
        },
    )
    assert violations(root) == []
