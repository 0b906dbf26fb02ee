#!/usr/bin/env python3
"""Build the v2g-controller Debian package with the system python3 and dpkg-deb, nothing else.

    /usr/bin/python3 packaging/build_deb.py [--out DIR] [--work DIR]   (`make deb`)

Needs python3-venv (the package's virtualenv) and dpkg-deb; not dpkg-dev, debhelper or fakeroot
(``dpkg-deb --root-owner-group`` makes every file root's). Prints the .deb's path last.

The application's interpreter environment is a virtualenv built here, at package time, inside a
staging root at ``<root>/opt/v2g-controller``, then made to live at /opt/v2g-controller. Creating
it in postinst from bundled wheels was the other way; building it here wins because:

* the charger needs no pip, compiler or network at install time, and installs in seconds;
* every file the package installs is one dpkg knows (``dpkg -L``, ``dpkg --verify``), so an
  upgrade replaces exactly them and a purge removes them; postinst-made files would be invisible;
* what is installed is byte for byte what was built and checked here (the import smoke below).

A virtualenv names its own path in only a few places, and all of them are text: the scripts'
``#!`` lines and the activate scripts in bin/, and pyvenv.cfg's ``command``. pip installs
without compiling (``--no-compile``); the bytecode is compiled after the move with its source
path set to the installed one, in checked-hash mode so that it is never stale whatever mtimes
dpkg gives the files, and Python never writes bytecode of its own under /opt. The build then
fails if any file still holds the staging path.

The virtualenv's interpreter is the system's versioned one (/usr/bin/python3.11): the compiled
wheels are built for that minor version, so the package depends on that interpreter's package.
Shared-library dependencies come from the ELF files' DT_NEEDED entries, found in the system
through ldconfig and mapped to their packages by dpkg-query; glibc's minimum version is the
highest manylinux baseline among the bundled wheels.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

PACKAGE = "v2g-controller"
PREFIX = Path("/opt/v2g-controller")
REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "packaging"
CONFFILES = ("/etc/v2g-controller/config.yaml",)
# Extras installed with the project: the charger board's GPIO lines need libgpiod's bindings.
EXTRAS = "gpio"
# In the virtualenv only to install; not needed to run.
BUILD_ONLY_DISTRIBUTIONS = ("pip", "setuptools")
DOCS = ("deploy.md", "configuration.md", "troubleshooting.md", "safety.md", "vehicle.md",
        "inverter.md", "mqtt.md", "ledger.md", "economics.md")  # fmt: skip


class BuildError(Exception):
    """Why the package could not be built, as the one who ran `make deb` reads it."""


def _say(message: str) -> None:
    print(f"build_deb: {message}", file=sys.stderr, flush=True)  # noqa: T201


def _run(command: Sequence[str | Path], cwd: str | None = None) -> str:
    """Run a build step; its failure is a BuildError with the step's own output."""
    result = subprocess.run(  # noqa: S603 (argument lists built here, no shell)
        [str(part) for part in command], capture_output=True, text=True, check=False, cwd=cwd
    )
    if result.returncode != 0:
        raise BuildError(
            f"{' '.join(str(p) for p in command)} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result.stdout


def _changelog_head() -> tuple[str, str]:
    """The newest entry's version and maintainer (packaging/changelog, deb-changelog(5))."""
    text = (HERE / "changelog").read_text()
    head = re.match(r"(\S+) \(([^)]+)\)", text)
    trailer = re.search(r"^ -- (.+?)  ", text, re.MULTILINE)
    if head is None or trailer is None or head.group(1) != PACKAGE:
        raise BuildError("packaging/changelog: expected a deb-changelog(5) entry for " + PACKAGE)
    return head.group(2), trailer.group(1)


def _project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def _interpreter(python: str) -> tuple[Path, str]:
    """The system's versioned interpreter behind ``python`` and the Debian package shipping it."""
    version = _run([python, "-c", "import sys; print(*sys.version_info[:2], sep='.')"]).strip()
    versioned = Path(f"/usr/bin/python{version}")
    owner = _run(["dpkg-query", "-S", str(versioned)]).split(":", 1)[0]
    # python3.X-minimal ships the binary; python3.X brings the whole standard library with it
    # (sqlite3 for the ledger, ssl for the broker).
    return versioned, owner.removesuffix("-minimal")


def _source_copy(target: Path) -> Path:
    """What the wheel is built from, outside the source tree: setuptools builds in place and
    would otherwise reuse a stale build/lib there, and leave its egg-info behind."""
    for name in ("pyproject.toml", "README.md"):
        _install(REPO / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "controller", target / "controller", ignore=ignore)
    return target


def _build_venv(root: Path, python: Path, work_dir: Path) -> Path:
    venv = root / PREFIX.relative_to("/")
    _say(f"virtualenv at {venv} with {python}")
    _run([python, "-m", "venv", venv])
    pip: list[str | Path] = [venv / "bin" / "python", "-m", "pip"]
    wheel_dir = work_dir / "wheels"
    source = _source_copy(work_dir / "source")
    _run([*pip, "wheel", "--no-deps", "--wheel-dir", wheel_dir, source])
    (wheel,) = wheel_dir.glob("v2g_controller-*.whl")
    _say(f"installing {wheel.name}[{EXTRAS}] and its dependencies")
    _run([*pip, "install", "--no-compile", "--no-warn-script-location", f"{wheel}[{EXTRAS}]"])
    _run([*pip, "uninstall", "--yes", *BUILD_ONLY_DISTRIBUTIONS])
    return venv


def _relocate(root: Path, venv: Path) -> None:
    """Point every self-reference of the virtualenv at /opt/v2g-controller."""
    staged = str(venv).encode()
    for path in [venv / "pyvenv.cfg", *sorted((venv / "bin").iterdir())]:
        if path.is_symlink() or not path.is_file():
            continue
        content = path.read_bytes()
        if staged in content:
            path.write_bytes(content.replace(staged, str(PREFIX).encode()))
    # Bytecode naming its installed source: tracebacks show /opt/..., never the staging path.
    _run(
        [
            venv / "bin" / "python", "-m", "compileall", "-q", "-j", "0",
            "--invalidation-mode", "checked-hash", "-s", root, "-p", "/", venv / "lib",
        ]
    )  # fmt: skip
    for dist_info in venv.glob("lib/python3*/site-packages/v2g_controller-*.dist-info"):
        # The wheel's build path on this machine; nothing reads it.
        (dist_info / "direct_url.json").unlink(missing_ok=True)


def _smoke(venv: Path) -> None:
    """Every controller module imports from the virtualenv, and the command line answers."""
    script = (
        "import importlib, pkgutil, sys, controller\n"
        "assert controller.__file__.startswith(sys.argv[1]), controller.__file__\n"
        "for module in pkgutil.walk_packages(controller.__path__, 'controller.'):\n"
        "    if not module.name.endswith('__main__'):\n"
        "        importlib.import_module(module.name)\n"
        "from controller.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
    )
    # -I: not the source tree (nor PYTHONPATH); -B: no bytecode with the staging path.
    _run([venv / "bin" / "python", "-I", "-B", "-c", script, venv], cwd="/")


def _walk(root: Path) -> Iterator[Path]:
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            yield Path(directory) / name


def _no_staging_path(root: Path) -> None:
    staged = str(root).encode()
    leaks = [
        str(path.relative_to(root))
        for path in _walk(root)
        if path.is_file() and not path.is_symlink() and staged in path.read_bytes()
    ]
    if leaks:
        raise BuildError(f"files still naming the staging root {root}: {', '.join(leaks[:10])}")


def _install(source: Path, target: Path, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def _gzip(source: Path, target: Path) -> None:
    """gzip -9n: no name, no time stamp (reproducible, and what lintian expects)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress(source.read_bytes(), compresslevel=9, mtime=0))
    target.chmod(0o644)


def _add_files(root: Path) -> None:
    _install(REPO / "systemd" / "v2g-controller.service",
             root / "lib/systemd/system/v2g-controller.service")  # fmt: skip
    _install(HERE / "sysusers.conf", root / "usr/lib/sysusers.d/v2g-controller.conf")
    _install(HERE / "udev-gpio.rules", root / "lib/udev/rules.d/60-v2g-controller-gpio.rules")
    _install(REPO / "config" / "example.yaml", root / "etc/v2g-controller/config.yaml")
    share = root / "usr/share/v2g-controller"
    # The conffile as shipped: postinst starts nothing while the config is still this file.
    _install(REPO / "config" / "example.yaml", share / "config.example.yaml")
    for dbc in sorted((REPO / "dbc").glob("*.dbc")):
        _install(dbc, share / "dbc" / dbc.name)
    for kind in ("bms", "inverters"):
        for path in sorted((REPO / "config" / kind).iterdir()):
            _install(path, share / kind / path.name)
    doc = root / "usr/share/doc/v2g-controller"
    _install(HERE / "copyright", doc / "copyright")
    _gzip(HERE / "changelog", doc / "changelog.Debian.gz")
    _install(REPO / "README.md", doc / "README.md")
    for name in DOCS:
        _install(REPO / "docs" / name, doc / name)
    for example in sorted((REPO / "config").glob("example*.yaml")):
        _install(example, doc / "examples" / example.name)
    _gzip(HERE / "v2g-controller.1", root / "usr/share/man/man1/v2g-controller.1.gz")
    _install(HERE / "lintian-overrides", root / "usr/share/lintian/overrides/v2g-controller")
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/v2g-controller").symlink_to(PREFIX / "bin" / "v2g-controller")


_SHARED_LIBRARY = re.compile(r"\.so(\.\d+)*$")


def _normalise_modes(root: Path) -> None:
    """0755 for directories and executables, 0644 for the rest (lintian's standard modes)."""
    root.chmod(0o755)
    for path in _walk(root):
        if path.is_symlink():
            continue
        # Shared libraries are mapped, not executed: 0644 whatever mode their wheel gave them.
        library = _SHARED_LIBRARY.search(path.name) is not None
        executable = path.is_dir() or (path.stat().st_mode & stat.S_IXUSR and not library)
        path.chmod(0o755 if executable else 0o644)


# --- Shared-library dependencies --------------------------------------------------------------

_ELF_MAGIC = b"\x7fELF"
_SHT_DYNAMIC = 6
_DT_NEEDED = 1


def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED sonames of an ELF file (the ELF gABI's section and dynamic-table layouts)."""
    with path.open("rb") as file:
        if file.read(4) != _ELF_MAGIC:
            return []
    data = path.read_bytes()
    wide = data[4] == 2  # EI_CLASS: ELFCLASS64
    order = "<" if data[5] == 1 else ">"  # EI_DATA: ELFDATA2LSB
    if wide:
        shoff, shentsize, shnum = struct.unpack_from(order + "40xQ10xHH", data, 0)
        section = order + "4xI16xQQI12xQ"  # sh_type, sh_offset, sh_size, sh_link, sh_entsize
        entry = order + "qQ"
    else:
        shoff, shentsize, shnum = struct.unpack_from(order + "32xI10xHH", data, 0)
        section = order + "4xI8xIII8xI"
        entry = order + "iI"
    sections = [
        struct.unpack_from(section, data, shoff + index * shentsize) for index in range(shnum)
    ]
    needed: list[str] = []
    for sh_type, offset, size, link, entsize in sections:
        if sh_type != _SHT_DYNAMIC or entsize == 0:
            continue
        strtab_offset = sections[link][1]
        for position in range(offset, offset + size, entsize):
            tag, value = struct.unpack_from(entry, data, position)
            if tag == _DT_NEEDED:
                start = strtab_offset + value
                needed.append(data[start : data.index(b"\0", start)].decode())
    return needed


def _system_libraries() -> dict[str, Path]:
    """soname -> path, for the build machine's architecture (``ldconfig -p``)."""
    libraries: dict[str, Path] = {}
    for line in _run(["/sbin/ldconfig", "-p"]).splitlines()[1:]:
        match = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        # On 64-bit machines ldconfig lists the 32-bit libraries too; the first entry is native.
        if match and match.group(1) not in libraries:
            libraries[match.group(1)] = Path(match.group(3))
    return libraries


def _owning_package(path: Path) -> str:
    # usrmerge: dpkg knows a library by one of its two names.
    candidates: list[Path] = []
    for name in (path, path.resolve()):
        if name.is_relative_to("/usr"):
            candidates += [name, Path("/") / name.relative_to("/usr")]
        else:
            candidates += [name, Path("/usr") / name.relative_to("/")]
    for candidate in candidates:
        result = subprocess.run(  # noqa: S603
            ["dpkg-query", "-S", str(candidate)],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0:
            return result.stdout.split(":", 1)[0]
    raise BuildError(f"no Debian package ships {path}")


def _glibc_minimum(venv: Path) -> tuple[int, int]:
    """The highest manylinux glibc baseline among the wheels (each wheel's lowest tag)."""
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    highest = (2, 17)
    for wheel_file in venv.glob("lib/python3*/site-packages/*.dist-info/WHEEL"):
        floors: list[tuple[int, int]] = []
        for tag in re.findall(r"^Tag: \S+-\S+-(\S+)$", wheel_file.read_text(), re.MULTILINE):
            for platform in tag.split("."):
                modern = re.match(r"manylinux_(\d+)_(\d+)_", platform)
                if modern:
                    floors.append((int(modern.group(1)), int(modern.group(2))))
                elif platform.split("_")[0] in legacy:
                    floors.append(legacy[platform.split("_")[0]])
        if floors:
            highest = max(highest, min(floors))
    return highest


def shared_library_depends(root: Path, venv: Path) -> list[str]:
    """Debian packages providing the libraries the bundled ELF files need and do not bundle."""
    bundled = {path.name for path in _walk(root) if path.is_file()}
    system = _system_libraries()
    packages: set[str] = set()
    for path in _walk(root):
        if not path.is_file() or path.is_symlink():
            continue
        for soname in elf_needed(path):
            if soname in bundled:
                continue
            if soname not in system:
                raise BuildError(f"{path.relative_to(root)} needs {soname}, not on this system")
            packages.add(_owning_package(system[soname]))
    major, minor = _glibc_minimum(venv)
    return [f"libc6 (>= {major}.{minor})" if name == "libc6" else name for name in sorted(packages)]


# --- Control area -----------------------------------------------------------------------------


def _installed_size_kib(root: Path) -> int:
    total = sum(path.lstat().st_size for path in _walk(root) if path.is_file() or path.is_symlink())
    directories = sum(1 for path in _walk(root) if path.is_dir() and not path.is_symlink())
    return (total + 1023) // 1024 + directories


def _write_control(root: Path, fields: dict[str, str]) -> None:
    control = root / "DEBIAN"
    control.mkdir(mode=0o755)
    (control / "control").write_text("".join(f"{key}: {value}\n" for key, value in fields.items()))
    (control / "conffiles").write_text("".join(f"{path}\n" for path in CONFFILES))
    sums = [
        f"{hashlib.md5(path.read_bytes()).hexdigest()}  {path.relative_to(root)}\n"  # noqa: S324 (md5sums(5) is MD5)
        for path in _walk(root)
        if path.is_file()
        and not path.is_symlink()
        and "/" + str(path.relative_to(root)) not in CONFFILES
        and path.relative_to(root).parts[0] != "DEBIAN"
    ]
    (control / "md5sums").write_text("".join(sums))
    for name in ("preinst", "postinst", "prerm", "postrm"):
        _install(HERE / "debian" / name, control / name, 0o755)
    for name in ("control", "conffiles", "md5sums"):
        (control / name).chmod(0o644)


DESCRIPTION = """\
controller that turns a bidirectional EV charger into a grid asset
 The charger's daemon: it talks to the car's battery management system over
 CAN (CHAdeMO, GB/T 27930), drives the bidirectional inverter over Modbus
 (SunSpec or a vendor register map), takes setpoints from the aggregator over
 MQTT, and keeps every command inside the owner's and the hardware's limits.
 .
 The application and its Python libraries live in their own virtualenv under
 /opt/v2g-controller; the service runs as the system user v2g. The service is
 started only once /etc/v2g-controller/config.yaml passes check-config."""


def build(out_dir: Path, work_dir: Path, python: str) -> Path:
    debian_version, maintainer = _changelog_head()
    upstream = debian_version.rsplit("-", 1)[0]
    if upstream != _project_version():
        raise BuildError(
            f"packaging/changelog's newest entry is {debian_version}, pyproject.toml's version "
            f"is {_project_version()}: add a changelog entry for it"
        )
    architecture = _run(["dpkg", "--print-architecture"]).strip()
    interpreter, interpreter_package = _interpreter(python)
    if work_dir.exists():
        shutil.rmtree(work_dir)
    root = work_dir / "root"
    root.mkdir(parents=True)
    venv = _build_venv(root, interpreter, work_dir)
    _relocate(root, venv)
    _smoke(venv)
    _add_files(root)
    _normalise_modes(root)
    _no_staging_path(root)
    depends = [
        "python3 (>= 3.11)",
        interpreter_package,
        *shared_library_depends(root, venv),
        "systemd",
    ]
    fields = {
        "Package": PACKAGE,
        "Version": debian_version,
        "Architecture": architecture,
        "Maintainer": maintainer,
        "Installed-Size": str(_installed_size_kib(root)),
        "Depends": ", ".join(dict.fromkeys(depends)),
        "Recommends": "systemd-timesyncd | time-daemon",
        "Suggests": "can-utils",
        "Section": "misc",
        "Priority": "optional",
        "Description": DESCRIPTION,
    }
    _write_control(root, fields)
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{PACKAGE}_{debian_version}_{architecture}.deb"
    _say(f"dpkg-deb --build -> {deb}")
    _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb])
    return deb


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the .deb goes")
    parser.add_argument(
        "--work", type=Path, default=REPO / "build" / "deb", help="staging (emptied first)"
    )
    parser.add_argument(
        "--python", default="/usr/bin/python3", help="the system interpreter (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    started_s = time.monotonic()
    try:
        deb = build(args.out.resolve(), args.work.resolve(), args.python)
    except BuildError as error:
        _say(f"failed: {error}")
        return 1
    size_mib = deb.stat().st_size / 2**20
    _say(f"built in {time.monotonic() - started_s:.0f} s, {size_mib:.1f} MiB")
    print(deb)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
