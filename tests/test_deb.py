"""The Debian package (`make deb`, packaging/build_deb.py): its contents, an install with dpkg on
this machine, the commands from the installed path, the maintainer scripts' start decision, a
purge that leaves nothing behind, and lintian without errors.

Slow: the build installs every dependency into a fresh virtualenv (about a minute on a quiet
machine, several on a busy one); under pytest-xdist the workers share one build. Installing
needs root, dpkg-deb, python3-venv and lintian; under CI a missing one is a failure (conftest.py).
The install tests never run over a real installation (they stop if the package or its
directories are already there), take turns at dpkg (a file lock shared by pytest-xdist workers)
and purge the package in a `finally`, whatever failed; the by-hand test also removes the
directories it made.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BUILDER = REPO / "packaging" / "build_deb.py"
SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGE = "v2g-controller"
PREFIX = Path("/opt/v2g-controller")
CLI = PREFIX / "bin" / "v2g-controller"
CONFIG = Path("/etc/v2g-controller/config.yaml")
STATE_DIR = Path("/var/lib/v2g-controller")
# What the package created (preinst and postinst write it, postrm purge reads it): root's.
MARKER = Path("/var/lib/v2g-controller-package/created")
UNIT = "v2g-controller.service"
BUILD_TIMEOUT_S = 1200
COMMAND_TIMEOUT_S = 300
DPKG_LOCK_WAIT_S = 120.0

# What the package must install (dpkg-deb --contents, then on disk).
EXPECTED_FILES = (
    CLI,
    PREFIX / "bin" / "python",
    PREFIX / "pyvenv.cfg",
    Path("/usr/bin/v2g-controller"),
    Path("/lib/systemd/system/v2g-controller.service"),
    Path("/usr/lib/sysusers.d/v2g-controller.conf"),
    CONFIG,
    Path("/usr/share/v2g-controller/dbc/chademo.dbc"),
    Path("/usr/share/v2g-controller/dbc/gbt27930.dbc"),
    Path("/usr/share/doc/v2g-controller/copyright"),
    Path("/usr/share/doc/v2g-controller/changelog.Debian.gz"),
    Path("/usr/share/doc/v2g-controller/deploy.md"),
    Path("/usr/share/man/man1/v2g-controller.1.gz"),
)
# Where a leftover would be; walked after the purge.
LEFTOVER_ROOTS = (
    Path("/opt"),
    Path("/etc"),
    Path("/var/lib"),
    Path("/usr/bin"),
    Path("/usr/lib/sysusers.d"),
    Path("/usr/share/doc"),
    Path("/usr/share/man/man1"),
    Path("/usr/share/lintian/overrides"),
    Path("/lib/systemd"),
    Path("/lib/udev/rules.d"),
)


def _require_tools(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make system-packages / make deb-packages)")
    venv_ok = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import venv, ensurepip"], capture_output=True, check=False
    )
    if venv_ok.returncode != 0:
        pytest.skip(f"{SYSTEM_PYTHON} has no venv/ensurepip (Debian package python3-venv)")


def _build(out: Path) -> Path:
    result = subprocess.run(
        [SYSTEM_PYTHON, str(BUILDER), "--out", str(out), "--work", str(out / "work")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert deb.is_file(), result.stdout
    return deb


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built package; pytest-xdist workers build it once between them (a file lock in the
    run's shared temporary directory)."""
    _require_tools("dpkg-deb")
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return _build(tmp_path_factory.mktemp("deb"))
    shared = tmp_path_factory.getbasetemp().parent / "deb"
    shared.mkdir(exist_ok=True)
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = shared / "built"
        if built.exists():
            return Path(built.read_text())
        path = _build(shared)
        built.write_text(str(path))
        return path


def _run(command: Sequence[str | Path], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
        cwd="/",
        env={**os.environ, **env},
    )


def _without_systemd(command: Sequence[str | Path]) -> list[str | Path]:
    """The command as on a machine where systemd is not running: on one where it is, /run/systemd
    is hidden from it (a private mount namespace), so the install never starts the service."""
    if not Path("/run/systemd").is_dir():
        return list(command)
    script = 'mount -t tmpfs tmpfs /run/systemd && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *command]


def _with_fake_systemd(command: Sequence[str | Path], fake_bin: Path) -> tuple[list[str], str]:
    """The command as on a machine where systemd runs (a private /run holding
    /run/systemd/system), and the PATH that puts the fake systemctl and deb-systemd-invoke
    first."""
    body = 'mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && exec "$@"'
    wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c", body, "sh"]
    path = f"{fake_bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return [*wrapped, *map(str, command)], path


def _dpkg(*arguments: str | Path, fake_bin: Path | None = None) -> subprocess.CompletedProcess[str]:
    """dpkg, waiting (bounded) while another apt or dpkg on the machine holds its lock; with
    systemd hidden, or seemingly running with ``fake_bin``'s tools recording the calls."""
    deadline_s = time.monotonic() + DPKG_LOCK_WAIT_S
    while True:
        if fake_bin is None:
            result = _run(_without_systemd(["dpkg", *arguments]), DEBIAN_FRONTEND="noninteractive")
        else:
            (fake_bin / "calls").unlink(missing_ok=True)
            command, path = _with_fake_systemd(["dpkg", *arguments], fake_bin)
            result = _run(command, DEBIAN_FRONTEND="noninteractive", PATH=path)
        locked = result.returncode != 0 and "lock" in result.stderr
        if not locked or time.monotonic() > deadline_s:
            return result
        time.sleep(2.0)


def _installed_status() -> str:
    result = _run(["dpkg-query", "-W", "-f=${Status}", PACKAGE])
    return result.stdout if result.returncode == 0 else "not-installed"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _leftovers() -> list[str]:
    """Every path under LEFTOVER_ROOTS whose name mentions the package."""
    found: list[str] = []
    for root in LEFTOVER_ROOTS:
        if not root.is_dir():
            continue
        for directory, dirnames, filenames in os.walk(root):
            found += [
                os.path.join(directory, name)  # noqa: PTH118 (os.walk yields strings)
                for name in [*dirnames, *filenames]
                if PACKAGE in name or name == "v2g"
            ]
    return sorted(found)


def _contents(deb: Path) -> set[Path]:
    listing = _run(["dpkg-deb", "--contents", deb])
    assert listing.returncode == 0, listing.stderr
    # "drwxr-xr-x root/root 0 2026-12-03 11:39 ./etc/" and "... ./usr/bin/x -> /target"
    names = (line.split(None, 5)[5].split(" -> ")[0] for line in listing.stdout.splitlines())
    return {Path("/" + name.removeprefix("./")) for name in names}


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
def test_package_lists_the_application_unit_user_config_and_data(deb: Path) -> None:
    """dpkg-deb --contents has every file the package promises; the control data make the
    config a conffile, depend on the interpreter the virtualenv was built with, and carry the
    maintainer scripts."""
    contents = _contents(deb)
    assert [path for path in EXPECTED_FILES if path not in contents] == []
    assert Path("/usr/share/lintian/overrides/v2g-controller") in contents
    assert not [path for path in contents if "__pycache__" in path.parts and path.suffix == ".py"]

    fields = _run(["dpkg-deb", "--field", deb])
    assert fields.returncode == 0, fields.stderr
    control = dict(re.findall(r"^(\S+): (.*)$", fields.stdout, re.MULTILINE))
    assert control["Package"] == PACKAGE
    assert control["Architecture"] == _run(["dpkg", "--print-architecture"]).stdout.strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+", control["Version"])
    depends = [entry.strip() for entry in control["Depends"].split(",")]
    assert "python3 (>= 3.11)" in depends
    assert any(re.fullmatch(r"python3\.\d+", entry) for entry in depends), depends
    assert any(re.fullmatch(r"libc6 \(>= 2\.\d+\)", entry) for entry in depends), depends
    assert deb.name == f"{PACKAGE}_{control['Version']}_{control['Architecture']}.deb"

    conffiles = _run(["dpkg-deb", "--info", deb, "conffiles"])
    assert conffiles.stdout.split() == [str(CONFIG)]
    info = _run(["dpkg-deb", "--info", deb]).stdout
    for script in ("preinst", "postinst", "prerm", "postrm"):
        assert re.search(rf"\s{script}\s+#!/bin/sh", info), info


def _fake_systemd_bin(directory: Path) -> Path:
    """systemctl and deb-systemd-invoke that record their arguments instead of acting."""
    directory.mkdir()
    for name in ("systemctl", "deb-systemd-invoke"):
        tool = directory / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >>"{directory}/calls"\n')
        tool.chmod(0o755)
    return directory


def _maintainer_script(
    script: str, argument: str, fake_bin: Path
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run an installed maintainer script as dpkg would, with systemd seemingly running (a
    private /run holding /run/systemd/system) and the fake tools first on PATH."""
    calls = fake_bin / "calls"
    calls.unlink(missing_ok=True)
    command, path = _with_fake_systemd(
        [f"/var/lib/dpkg/info/{PACKAGE}.{script}", argument], fake_bin
    )
    result = _run(
        command, PATH=path, DPKG_MAINTSCRIPT_PACKAGE=PACKAGE, DPKG_MAINTSCRIPT_NAME=script
    )
    return result, _calls(fake_bin)


def _calls(fake_bin: Path) -> list[str]:
    calls = fake_bin / "calls"
    return calls.read_text().splitlines() if calls.exists() else []


def _check_installed(fake_bin: Path) -> None:
    for path in EXPECTED_FILES:
        assert path.exists() or path.is_symlink(), path
    assert Path("/usr/bin/v2g-controller").resolve() == CLI.resolve()

    account = pwd.getpwnam("v2g")
    assert account.pw_dir == str(STATE_DIR)
    assert account.pw_shell == "/usr/sbin/nologin"
    for group in ("dialout", "gpio"):
        assert "v2g" in grp.getgrnam(group).gr_mem, group
    config_stat = CONFIG.stat()
    assert grp.getgrgid(config_stat.st_gid).gr_name == "v2g"
    assert stat.S_IMODE(config_stat.st_mode) == 0o640
    assert pwd.getpwuid(STATE_DIR.stat().st_uid).pw_name == "v2g"
    assert Path(f"/etc/systemd/system/multi-user.target.wants/{UNIT}").is_symlink()

    check = _run([CLI, "check-config", CONFIG])
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip().endswith("OK"), check.stdout
    usage = _run(["/usr/bin/v2g-controller", "--help"])
    assert usage.returncode == 0, usage.stderr
    for command in ("run", "check-config", "ledger", "probe", "status", "reset"):
        assert command in usage.stdout
    probes = _run(["/usr/bin/v2g-controller", "probe", "--help"])
    assert probes.returncode == 0, probes.stderr
    for probe in ("inverter", "vehicle", "broker"):
        assert probe in probes.stdout
    # No daemon here (systemd does not run): status says so plainly, with no traceback.
    status = _run(["/usr/bin/v2g-controller", "status"])
    assert status.returncode == 1, status.stdout + status.stderr
    assert "no status socket" in status.stderr
    assert "Traceback" not in status.stderr
    # The installed code, not this source tree: imported from /opt, DBC files from /usr/share.
    where = _run(
        [
            PREFIX / "bin" / "python", "-I", "-c",
            "import controller; from controller.vehicle.dbc import find_dbc; "
            "print(controller.__file__); print(find_dbc('chademo.dbc'))",
        ]
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    module_path, dbc_path = where.stdout.split()
    assert module_path.startswith(f"{PREFIX}/lib/python3")
    assert dbc_path == "/usr/share/v2g-controller/dbc/chademo.dbc"

    _check_maintainer_scripts(fake_bin)


def _check_maintainer_scripts(fake_bin: Path) -> None:
    """postinst's start decision and prerm's stop, with a faked running systemd."""
    # With systemd running, the config decides: the example as shipped starts nothing ...
    configured, calls = _maintainer_script("postinst", "configure", fake_bin)
    assert configured.returncode == 0, configured.stderr
    assert not [call for call in calls if call.startswith("deb-systemd-invoke")], calls
    assert "still the example the package ships" in configured.stderr
    # ... one made this charger's and checked restarts the service ...
    good = CONFIG.read_bytes()
    try:
        CONFIG.write_bytes(good.replace(b"charger_id: v2g-01", b"charger_id: v2g-02"))
        assert CONFIG.read_bytes() != good
        configured, calls = _maintainer_script("postinst", "configure", fake_bin)
        assert configured.returncode == 0, configured.stderr
        assert f"deb-systemd-invoke restart {UNIT}" in calls
        # ... and one that fails check-config leaves it stopped, and says why.
        CONFIG.write_text("inverter:\n  port: -1\n")
        configured, calls = _maintainer_script("postinst", "configure", fake_bin)
    finally:
        CONFIG.write_bytes(good)
    assert configured.returncode == 0, configured.stderr
    assert not [call for call in calls if call.startswith("deb-systemd-invoke")], calls
    assert "does not pass check-config" in configured.stderr
    assert "required key is missing" in configured.stdout + configured.stderr
    stopped, calls = _maintainer_script("prerm", "remove", fake_bin)
    assert stopped.returncode == 0, stopped.stderr
    assert calls == [f"deb-systemd-invoke stop {UNIT}"]


def _before_install() -> Iterator[Path]:
    """What of the package's own places is on this machine already (then the test refuses)."""
    for path in (PREFIX, CONFIG.parent, STATE_DIR, MARKER.parent):
        if path.exists():
            yield path


@dataclass(frozen=True)
class _Machine:
    """What was on the machine before a test installed the package."""

    existed: frozenset[Path]  # the package's paths that were there already
    user: bool
    gpio: bool
    leftovers: tuple[str, ...]


@pytest.fixture
def fresh_machine(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Machine]:
    """This machine without the package, for one install test at a time (pytest-xdist workers
    and other runs of this file take turns); the snapshot to compare with after the purge."""
    _require_tools("dpkg", "unshare")
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root")
    lock_path = tmp_path_factory.getbasetemp().parent / f"{PACKAGE}-dpkg.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_status() != "not-installed" or list(_before_install()):
            pytest.skip(
                f"{PACKAGE} or its directories are on this machine already "
                f"({_installed_status()}, {list(_before_install())}); the test does not touch them"
            )
        yield _Machine(
            existed=frozenset(
                path for path in _contents(deb) if path.exists() or path.is_symlink()
            ),
            user=_user_exists("v2g"),
            gpio=_group_exists("gpio"),
            leftovers=tuple(_leftovers()),
        )


def _assert_purged_clean(deb: Path, before: _Machine) -> None:
    """No file, directory, user or group of the package's making is left, /etc/systemd
    included (the unit's enablement and mask)."""
    assert _installed_status() == "not-installed"
    still_there = {path for path in _contents(deb) if path.exists() or path.is_symlink()}
    assert sorted(still_there - before.existed) == []
    for path in (PREFIX, CONFIG.parent, STATE_DIR, MARKER.parent):
        assert not path.exists(), path
        assert not path.is_symlink(), path
    assert [path for path in Path("/etc/systemd").rglob("*") if PACKAGE in path.name] == []
    assert _user_exists("v2g") == before.user
    assert _group_exists("v2g") == before.user
    assert _group_exists("gpio") == before.gpio
    assert _leftovers() == list(before.leftovers)


def _marker_lines() -> list[str]:
    """The created-marker's lines, after checking that only root may write it."""
    for path in (MARKER.parent, MARKER):
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (0, 0), path
        assert stat.S_IMODE(info.st_mode) == (0o755 if path == MARKER.parent else 0o644), path
    return MARKER.read_text().splitlines()


@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)
def test_installs_with_dpkg_runs_upgrades_and_purges_without_a_trace(
    deb: Path, fresh_machine: _Machine, tmp_path: Path
) -> None:
    """dpkg -i on this machine (no running systemd: the unit is enabled, not started), the
    commands from the installed path; dpkg -i of the same package again, now with systemd
    seemingly running (prerm upgrade stops the service, postinst configure OLD-VERSION does not
    start it on the example config, and notes nothing twice); then dpkg --purge: no file,
    directory, user or group of the package's making is left."""
    fake_bin = _fake_systemd_bin(tmp_path / "fake-bin")
    version = _run(["dpkg-deb", "--field", deb, "Version"]).stdout.strip()
    try:
        installed = _dpkg("--install", deb)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "systemd is not running" in installed.stderr
        listed = {Path(line) for line in _run(["dpkg", "-L", PACKAGE]).stdout.splitlines()}
        assert set(EXPECTED_FILES) <= listed
        expected_marker = [f"dir {STATE_DIR}", f"dir {CONFIG.parent}"]
        expected_marker += [] if fresh_machine.user else ["user v2g"]
        expected_marker += [] if fresh_machine.gpio else ["group gpio"]
        assert _marker_lines() == expected_marker
        _check_installed(fake_bin)

        assert (
            CONFIG.read_bytes()
            == Path("/usr/share/v2g-controller/config.example.yaml").read_bytes()
        )
        upgraded = _dpkg("--debug=2", "--install", deb, fake_bin=fake_bin)
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        # dpkg --debug=2 logs each maintainer script it runs: "fork/exec PATH ( ARGS )".
        scripts = re.findall(r"fork/exec /var/lib/dpkg/info/(\S+) \( (.*) \)", upgraded.stderr)
        assert (f"{PACKAGE}.prerm", f"upgrade {version}") in scripts, upgraded.stderr
        assert (f"{PACKAGE}.postinst", f"configure {version}") in scripts, upgraded.stderr
        calls = _calls(fake_bin)
        assert f"deb-systemd-invoke stop {UNIT}" in calls
        assert not [call for call in calls if re.match(r"deb-systemd-invoke (re)?start", call)], (
            calls
        )
        assert "still the example the package ships" in upgraded.stderr
        assert _marker_lines() == expected_marker
    finally:
        purged = _dpkg("--purge", PACKAGE)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert "was there before" not in purged.stderr
    assert (
        sorted(path for path in listed if path.exists() and path not in fresh_machine.existed) == []
    )
    _assert_purged_clean(deb, fresh_machine)


@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)
def test_remove_keeps_the_config_and_state_and_a_later_purge_leaves_nothing(
    deb: Path, fresh_machine: _Machine
) -> None:
    """dpkg -r: the program goes, the config, the state and the marker stay (config-files);
    dpkg --purge afterwards: nothing left, /etc/systemd clean."""
    try:
        installed = _dpkg("--install", deb)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        removed = _dpkg("--remove", PACKAGE)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert _installed_status() == "deinstall ok config-files"
        assert not PREFIX.exists()
        assert not Path("/usr/bin/v2g-controller").is_symlink()
        assert CONFIG.is_file()
        assert STATE_DIR.is_dir()
        assert f"dir {STATE_DIR}" in _marker_lines()
    finally:
        purged = _dpkg("--purge", PACKAGE)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    _assert_purged_clean(deb, fresh_machine)


@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)
def test_purge_leaves_the_directories_of_an_installation_by_hand(
    deb: Path, fresh_machine: _Machine
) -> None:
    """A charger installed by hand first has /var/lib/v2g-controller (its ledger) and
    /etc/v2g-controller (its TLS key) already: the package notes it did not create them, and
    purge leaves both with what is in them (only the packaged config.yaml goes), saying so."""
    ledger = STATE_DIR / "ledger.sqlite"
    key = CONFIG.parent / "tls" / "charger.key"
    made: list[Path] = []
    try:
        STATE_DIR.mkdir(mode=0o750)
        made.append(STATE_DIR)
        ledger.write_bytes(b"the by-hand ledger")
        made.append(CONFIG.parent)
        key.parent.mkdir(parents=True, mode=0o750)
        key.write_text("the by-hand key")
        try:
            installed = _dpkg("--install", deb)
            assert installed.returncode == 0, installed.stdout + installed.stderr
            assert not [line for line in _marker_lines() if line.startswith("dir ")]
        finally:
            purged = _dpkg("--purge", PACKAGE)
        assert purged.returncode == 0, purged.stdout + purged.stderr
        assert ledger.read_bytes() == b"the by-hand ledger"
        assert key.read_text() == "the by-hand key"
        assert not CONFIG.exists()  # the conffile: dpkg's to remove
        for directory in (STATE_DIR, CONFIG.parent):
            assert f"{directory} was there before the package was installed" in purged.stderr
        assert not PREFIX.exists()
        assert not MARKER.parent.exists()
        assert _installed_status() == "not-installed"
        assert _user_exists("v2g") == fresh_machine.user
        assert _group_exists("gpio") == fresh_machine.gpio
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
    assert _leftovers() == list(fresh_machine.leftovers)


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
def test_lintian_reports_no_errors_and_only_the_documented_warnings(deb: Path) -> None:
    """No lintian error (the overrides in packaging/lintian-overrides each give their reason);
    every warning left is explained in packaging/README.md."""
    _require_tools("lintian")
    result = _run(["lintian", "--fail-on", "error", deb])
    tags = re.findall(r"^([EW]): \S+: (\S+)", result.stdout, re.MULTILINE)
    assert [tag for level, tag in tags if level == "E"] == [], result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    documented = (REPO / "packaging" / "README.md").read_text()
    undocumented = sorted({tag for level, tag in tags if level == "W"} - set(
        re.findall(r"`([a-z0-9-]+)`", documented)
    ))  # fmt: skip
    assert undocumented == [], result.stdout
