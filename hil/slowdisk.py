"""A slow, full or dead SD card for one process: builds ``tools/slowdisk.c`` and preloads it.

``shim_path()`` compiles the shim once per source version into a cache directory of this user's
(``<tmp>/v2g-slowdisk-<hash>/slowdisk.so``, built beside it and renamed into place, so a
concurrent build or a killed one never leaves half a library), and ``slowdisk_env()`` gives the
environment that preloads it into a subprocess. ``Card`` flips the failure at run time::

    card = Card(short_dir / "data", fail_file=short_dir / "fail", count_file=short_dir / "fsyncs")
    env = slowdisk_env(card, fsync_delay_ms=1000)   # the daemon's environment, with LD_PRELOAD
    card.fail("ENOSPC")                             # writes under short_dir/data now fail
    card.heal()
    card.fsyncs()                                   # fsync + fdatasync calls on the card so far

What the shim does, exactly, is in the comment at the top of ``tools/slowdisk.c``. gcc is
required: without it ``SlowdiskUnavailableError`` says so (a test turns that into a skip, which
is a failure under ``CI=true``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

ROOT: Final = Path(__file__).resolve().parents[1]
SOURCE: Final = ROOT / "tools" / "slowdisk.c"
# The brief's flags, plus -Werror: a warning is a build failure, so the shim stays warning-free.
CFLAGS: Final = ("-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC")
LIBS: Final = ("-ldl",)
BUILD_TIMEOUT_S: Final = 120.0

Failure = Literal["ENOSPC", "EROFS", "EIO"]


class SlowdiskUnavailableError(RuntimeError):
    """The shim cannot be built here (no gcc, or the compiler refused the source)."""


@functools.cache
def shim_path() -> Path:
    """The built shim, compiled on first use in this process (and reused across processes)."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(CFLAGS + LIBS).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"v2g-slowdisk-{digest}"
    target = cache / "slowdisk.so"
    _own_private_directory(cache)
    if target.is_file():
        return target
    gcc = shutil.which("gcc")
    if gcc is None:
        raise SlowdiskUnavailableError(
            "gcc is not installed: the slow-storage tests build tools/slowdisk.c with it "
            "(apt-get install gcc)"
        )
    partial = cache / f"slowdisk.so.{os.getpid()}.partial"
    try:
        built = subprocess.run(
            [gcc, *CFLAGS, "-o", str(partial), str(SOURCE), *LIBS],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        if built.returncode != 0:
            raise SlowdiskUnavailableError(f"gcc could not build {SOURCE}:\n{built.stderr}")
        partial.replace(target)  # atomic: a reader sees no library or the whole one
    finally:
        partial.unlink(missing_ok=True)
    return target


def _own_private_directory(path: Path) -> None:
    """Create ``path`` for this user only, and refuse one that another user could write to:
    whatever lies in it is preloaded into the daemon."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise SlowdiskUnavailableError(f"{path}: not a private directory of this user; remove it")


@dataclass(frozen=True, slots=True)
class Card:
    """The directory that plays the SD card, and the files that steer and count it.

    ``fail_file`` and ``count_file`` must lie outside ``directory`` (the count file is written
    by the shim itself, and must not be refused while the card fails).
    """

    directory: Path
    fail_file: Path
    count_file: Path

    def __post_init__(self) -> None:
        for path in (self.fail_file, self.count_file):
            if path.resolve().is_relative_to(self.directory.resolve()):
                raise ValueError(f"{path} lies on the card {self.directory}; put it beside it")

    def fail(self, failure: Failure) -> None:
        """From now on, writes to the card fail with ``failure`` (written whole: rename)."""
        partial = self.fail_file.with_name(self.fail_file.name + ".partial")
        partial.write_text(f"{failure}\n", encoding="ascii")
        partial.replace(self.fail_file)

    def heal(self) -> None:
        """Writes to the card work again."""
        self.fail_file.unlink(missing_ok=True)

    def fsyncs(self) -> int:
        """fsync and fdatasync calls on the card so far (0 before the first)."""
        try:
            text = self.count_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        return int(text) if text else 0


def slowdisk_env(card: Card, *, fsync_delay_ms: int = 0) -> dict[str, str]:
    """The variables that preload the shim into a subprocess and point it at ``card``; every
    fsync of that process sleeps ``fsync_delay_ms`` first. Merge into the subprocess's env."""
    if fsync_delay_ms < 0:
        raise ValueError(f"fsync_delay_ms: expected 0 or more, found {fsync_delay_ms}")
    preload = str(shim_path())
    inherited = os.environ.get("LD_PRELOAD", "")
    return {
        "LD_PRELOAD": f"{preload} {inherited}".strip(),
        "SLOWDISK_DIR": str(card.directory),
        "SLOWDISK_FAIL_FILE": str(card.fail_file),
        "SLOWDISK_COUNT_FILE": str(card.count_file),
        "SLOWDISK_FSYNC_DELAY_MS": str(fsync_delay_ms),
    }
