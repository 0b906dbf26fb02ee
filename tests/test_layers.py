"""The layer contract (docs/architecture.md), checked on every import in the source tree.

Every ``import`` and ``from ... import`` is read from the syntax tree, including those inside
functions (a lazy import is still a dependency). The rules:

* ``controller.core`` imports nothing of the project but itself, and neither does the economics
  room ``controller.economics`` (tariffs, wear, the planner, receipts): pure rooms, fed values;
* no link (``vehicle``, ``inverter``, ``aggregator``) imports another link, and the ledger and the
  aggregator link do not import each other (both use ``controller.storage``);
* links, the ledger and the storage never import the wiring (``app``, ``daemon``, ``control``,
  ``cli``): only the wiring puts links together;
* ``controller`` never imports ``hil``, ``bench`` or ``tests``;
* only the config package and the wiring (``app``, ``cli`` and the ``factory`` modules that
  ``app`` calls) read YAML: no other module imports ``yaml`` or the config loader, uses
  ``yaml.``, or calls (or imports) ``load_config``, ``parse_config``, ``load_register_map``,
  ``load_bms_profile`` or ``bms_profile_error``. Links and sessions receive values, never paths.
* the simulators (``hil``) never use a session's internals. From the charger's session modules
  ``controller.vehicle.chademo``, ``.gbt27930`` and ``.j1939_tp`` they may import, by name
  (``from <module> import <Name>``), only what ``SIMULATOR_MAY_USE`` lists: the sessions, their
  configs and state enums (what a test needs to build a charger), and the sending half of the
  J1939-21 transport (``TpSender`` and the TP.CM / TP.DT codec, which
  ``tests/vehicle/test_j1939_tp.py`` checks against a recorded charger's and BMS's bytes: a
  transport, not the session under test). Never a constant, a private name or the receiving half
  (``TpReceiver``), and never the module itself (``import controller.vehicle.gbt27930``, ``from
  controller.vehicle import chademo``): the protocol's ids, PGNs, periods and timeouts come from
  ``controller.vehicle.protocols`` (checked against ``dbc/``), so a wrong constant in a session
  cannot be wrong in its simulator too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LINKS = ("controller.vehicle", "controller.inverter", "controller.aggregator")
WIRING = (
    "controller.app",
    "controller.daemon",
    "controller.control",
    "controller.planning",
    "controller.cli",
)
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


# Pure rooms: they import nothing of the project but themselves.
PURE_ROOMS = {"controller.core": "the core", "controller.economics": "the economics room"}

# Only these read YAML (a module named ``factory`` is wiring too: ``app`` builds links with it).
YAML_READERS = ("controller.config", "controller.app", "controller.cli")
YAML_MODULES = ("yaml", "controller.config.loader")
YAML_LOADERS = frozenset(
    {"load_config", "parse_config", "load_register_map", "load_bms_profile", "bms_profile_error"}
)
YAML_RULE = "only the config package and the wiring read YAML; links and sessions receive values"
# Session modules -> the names a simulator may import from them (see the module docstring).
SIMULATOR_MAY_USE: dict[str, frozenset[str]] = {
    "controller.vehicle.chademo": frozenset(
        {"ChademoChargerConfig", "ChademoSession", "ChademoState"}
    ),
    "controller.vehicle.gbt27930": frozenset({"GbtChargerConfig", "GbtSession", "GbtState"}),
    "controller.vehicle.j1939_tp": frozenset(
        {"TpSender", "TpSendResult", "DataPacket", "decode_cm", "encode_cm", "encode_dt"}
    ),
}
SIMULATORS = "hil"


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


def yaml_reads_of(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, what) for every way the file reads YAML: importing ``yaml`` or the config loader,
    using ``yaml.``, and calling or importing a function that opens or parses a YAML file."""
    for line, target in imports_of(path, module):
        if any(_within(target, yaml_module) for yaml_module in YAML_MODULES):
            yield line, f"imports {target}"
        elif _within(target, "controller.config") and target.rpartition(".")[2] in YAML_LOADERS:
            yield line, f"imports {target.rpartition('.')[2]}"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in YAML_LOADERS:
                yield node.lineno, f"calls {name}"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "yaml"
        ):
            yield node.lineno, f"uses yaml.{node.attr}"


def _may_read_yaml(module: str) -> bool:
    return module.rpartition(".")[2] == "factory" or any(
        _within(module, reader) for reader in YAML_READERS
    )


def violations(root: Path) -> list[str]:
    """Every import under ``root/controller`` that breaks the contract, and every YAML read
    outside the config package and the wiring, as "file:line: why"."""
    found: list[str] = []
    for path in sorted((root / "controller").rglob("*.py")):
        module = module_name(path, root)
        if not _may_read_yaml(module):
            found.extend(
                f"{path.relative_to(root)}:{line}: {module} {what}: {YAML_RULE}"
                for line, what in yaml_reads_of(path, module)
            )
        room = next((r for r in PURE_ROOMS if _within(module, r)), None)
        for line, target in imports_of(path, module):
            if room is not None and _within(target, "controller"):
                if not _within(target, room):
                    found.append(
                        f"{path.relative_to(root)}:{line}: {module} imports {target}: "
                        f"{PURE_ROOMS[room]} imports nothing of the project but itself"
                    )
                continue
            for importer, imported, why in FORBIDDEN:
                if _within(module, importer) and _within(target, imported):
                    found.append(
                        f"{path.relative_to(root)}:{line}: {module} imports {target}: {why}"
                    )
                    break
    return sorted(set(found))


def _session_internals(node: ast.Import | ast.ImportFrom, module: str) -> Iterator[str]:
    """What the import takes from a session module beyond ``SIMULATOR_MAY_USE``."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            for session in SIMULATOR_MAY_USE:
                if _within(alias.name, session):
                    yield alias.name
        return
    package = module.rpartition(".")[0]
    if node.level:
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    for alias in node.names:
        whole = f"{target}.{alias.name}"
        for session, allowed in SIMULATOR_MAY_USE.items():
            if _within(target, session):
                if target != session or alias.name not in allowed:
                    yield whole
            elif _within(whole, session):  # ``from controller.vehicle import chademo``
                yield whole


def simulator_violations(root: Path) -> list[str]:
    """Every import under ``root/hil`` of a session's internals, as "file:line: why"."""
    found: list[str] = []
    for path in sorted((root / SIMULATORS).rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.extend(
                    f"{path.relative_to(root)}:{node.lineno}: {module} imports {what}: a "
                    "simulator never uses a session's internals (controller.vehicle.protocols "
                    "has the protocol's facts)"
                    for what in _session_internals(node, module)
                )
    return sorted(set(found))


def test_the_source_tree_keeps_the_layer_contract() -> None:
    assert violations(ROOT) == []


def test_the_simulators_use_no_session_internals() -> None:
    """hil/ takes protocol facts from controller.vehicle.protocols, never from a session."""
    assert simulator_violations(ROOT) == []


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


@pytest.mark.parametrize(
    ("text", "what"),
    [
        (
            "from controller.vehicle.gbt27930 import PGN_BRM, GbtSession\n",
            "controller.vehicle.gbt27930.PGN_BRM",
        ),
        ("from controller.vehicle import j1939_tp as tp\n", "controller.vehicle.j1939_tp"),
        ("import controller.vehicle.chademo\n", "controller.vehicle.chademo"),
        (
            "def f():\n    from controller.vehicle.j1939_tp import TpReceiver\n",
            "controller.vehicle.j1939_tp.TpReceiver",
        ),
    ],
)
def test_a_simulator_importing_a_session_internal_is_reported(
    tmp_path: Path, text: str, what: str
) -> None:
    """A simulator taking a constant (or a whole module) from a session fails the check."""
    root = _tree(tmp_path, {"hil/vehicle/sim.py": text})
    line = text.count("\n", 0, text.index("import"))
    assert simulator_violations(root) == [
        f"hil/vehicle/sim.py:{line + 1}: hil.vehicle.sim imports {what}: a simulator never uses "
        "a session's internals (controller.vehicle.protocols has the protocol's facts)"
    ]


def test_a_simulator_may_import_facts_and_public_session_classes(tmp_path: Path) -> None:
    """Protocol facts and the listed public classes are not reported."""
    root = _tree(
        tmp_path,
        {
            "hil/vehicle/sim.py": (
                "from controller.vehicle.protocols.gbt27930 import PGN_BRM\n"
                "from controller.vehicle.gbt27930 import GbtChargerConfig\n"
                "from controller.vehicle.j1939_tp import TpSender, encode_cm\n"
                "from controller.vehicle import GbtSession\n"
            ),
        },
    )
    assert simulator_violations(root) == []


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


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "controller/vehicle/profile.py": (
                    "from controller.config import load_bms_profile\n\n"
                    "def session(path):\n    return load_bms_profile(path)\n"
                )
            },
            "controller/vehicle/profile.py:4: controller.vehicle.profile calls load_bms_profile: "
            + YAML_RULE,
        ),
        (
            {"controller/vehicle/profile.py": "from ..config import load_bms_profile as load\n"},
            "controller/vehicle/profile.py:1: controller.vehicle.profile imports "
            "load_bms_profile: " + YAML_RULE,
        ),
        (
            {
                "controller/inverter/regmap.py": (
                    "import controller.config\n\n"
                    "MAP = controller.config.load_register_map('map.yaml')\n"
                )
            },
            "controller/inverter/regmap.py:3: controller.inverter.regmap calls "
            "load_register_map: " + YAML_RULE,
        ),
        (
            {"controller/ledger/ledger.py": "import yaml\n\nTARIFF = yaml.safe_load('a: 1')\n"},
            "controller/ledger/ledger.py:3: controller.ledger.ledger uses yaml.safe_load: "
            + YAML_RULE,
        ),
        (
            {"controller/aggregator/durable_outbox.py": "from yaml import safe_load\n"},
            "controller/aggregator/durable_outbox.py:1: controller.aggregator.durable_outbox "
            "imports yaml: " + YAML_RULE,
        ),
        (
            {"controller/daemon.py": "def f(text):\n    return parse_config(text)\n"},
            "controller/daemon.py:2: controller.daemon calls parse_config: " + YAML_RULE,
        ),
    ],
)
def test_a_yaml_read_outside_the_config_package_and_the_wiring_is_reported(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    """The check fails on a deliberately added YAML read in a link, the ledger or the daemon."""
    assert expected in violations(_tree(tmp_path, files))


def test_the_config_package_and_the_wiring_may_read_yaml(tmp_path: Path) -> None:
    """The config package, app, cli and the factories that app calls read YAML unreported."""
    root = _tree(
        tmp_path,
        {
            "controller/config/loader.py": "import yaml\n\nLOADER = yaml.SafeLoader\n",
            "controller/config/schema.py": "from controller.config.loader import load_file\n",
            "controller/app.py": "from controller.config import load_register_map\n"
            "MAP = load_register_map('map.yaml')\n",
            "controller/cli.py": "from controller import config\nconfig.load_config('c.yaml')\n",
            "controller/vehicle/factory.py": "from controller.config import load_bms_profile\n"
            "PROFILE = load_bms_profile('p.yaml')\n",
            "controller/vehicle/link.py": "from controller.config import VehicleConfig, Loc\n",
        },
    )
    assert violations(root) == []
