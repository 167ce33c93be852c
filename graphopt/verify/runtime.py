"""Foreign ONNX Runtimes: the runtime an artifact will meet on the device, set up beside this machine's.

- ``aarch64``: Debian's arm64 Python 3.11 run by ``qemu-aarch64-static`` with the aarch64 onnxruntime wheel
  (1.20.1 by default: newer aarch64 wheels crash on import under qemu-user 7.2). Emulated time says nothing
  about ARM speed; what it checks is what the aarch64 build of ORT fuses, and its numbers.
- ``x86_64``: another onnxruntime version (devices run older runtimes than the build machine) for this
  machine's Python, isolated with ``python -S``.

Set-up is ``setup_foreign_runtime.sh`` (next to this file), cached under ``$GRAPHOPT_CACHE`` or
``~/.cache/graphopt/runtimes/<arch>-ort<version>``; it needs Debian's apt (for aarch64) and PyPI, once.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from graphopt.errors import ConfigError, RuntimeSetupError

Arch = Literal["aarch64", "x86_64"]
SETUP_SCRIPT = Path(__file__).with_name("setup_foreign_runtime.sh")
DEFAULT_ORT = "1.20.1"
_VERSION = re.compile(r"\d+\.\d+\.\d+")
#: Opset 18 (what graphopt writes) is read by onnxruntime 1.14 and later.
_OLDEST = (1, 14, 0)


def cache_root() -> Path:
    return Path(os.environ.get("GRAPHOPT_CACHE", Path.home() / ".cache" / "graphopt")) / "runtimes"


@dataclass(frozen=True)
class ForeignRuntime:
    arch: Arch
    ort_version: str = DEFAULT_ORT

    def __post_init__(self) -> None:
        if self.arch not in ("aarch64", "x86_64"):
            raise ConfigError(f"arch must be 'aarch64' or 'x86_64', got {self.arch!r}")
        if not _VERSION.fullmatch(self.ort_version) or tuple(map(int, self.ort_version.split("."))) < _OLDEST:
            raise ConfigError(
                f"onnxruntime version must look like 1.20.1 and be >= {'.'.join(map(str, _OLDEST))} (the "
                f"oldest with opset 18 and the fusions checked here), got {self.ort_version!r}"
            )

    @property
    def folder(self) -> Path:
        return cache_root() / f"{self.arch}-ort{self.ort_version}"

    @property
    def ready(self) -> bool:
        return (self.folder / "ready").is_file()

    @staticmethod
    def can_be_set_up(arch: Arch) -> tuple[bool, str]:
        """Whether this machine can host that runtime, and why not."""
        if sys.platform != "linux" or platform.machine() != "x86_64":
            return False, f"foreign runtimes are set up on Linux x86_64 hosts, this is {platform.machine()}"
        if (
            arch == "aarch64"
            and shutil.which("qemu-aarch64-static") is None
            and shutil.which("apt-get") is None
        ):
            return False, "aarch64 emulation needs qemu-user-static, and apt-get to install it"
        return True, ""

    def prepare(self, *, quiet: bool = True) -> None:
        """Set the runtime up once (a minute or two, downloads included); later calls return at once."""
        if self.ready:
            return
        ok, why = self.can_be_set_up(self.arch)
        if not ok:
            raise RuntimeSetupError(why)
        if not quiet:
            print(
                f"setting up {self.arch} onnxruntime {self.ort_version} in {self.folder} (once)",
                file=sys.stderr,
            )
        command = ["bash", str(SETUP_SCRIPT), str(self.folder), self.arch, self.ort_version]
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}
        )
        if done.returncode != 0 or not self.ready:
            shutil.rmtree(self.folder, ignore_errors=True)  # a half-made runtime must not look cached
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise RuntimeSetupError(
                f"setting up {self.arch} onnxruntime {self.ort_version} failed (exit {done.returncode}); it "
                f"needs PyPI and, for aarch64, Debian's apt as root. Last lines:\n{tail}"
            )

    def python(self) -> list[str]:
        """The command that starts this runtime's Python, isolated from the host's site-packages."""
        if self.arch == "aarch64":
            root = self.folder / "root"
            return ["qemu-aarch64-static", "-L", str(root), str(root / "usr/bin/python3.11"), "-S"]
        return [sys.executable, "-S"]

    def run(self, script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {
            "PYTHONPATH": str(self.folder / "site"),
            "PATH": os.environ.get("PATH", ""),
            "OMP_NUM_THREADS": "1",
        }
        return subprocess.run(
            [*self.python(), str(script), *args], capture_output=True, text=True, env=env, timeout=timeout
        )
