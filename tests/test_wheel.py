"""The package as a user installs it: sdist -> wheel -> a fresh virtual environment, no editable install.

CI installs graphopt editable, which maps the source folders and hides a wheel that lacks a package (it once
shipped without ``graphopt.search``, and ``import graphopt`` failed from the wheel). This test builds the
sdist from a copy of the checkout, builds the wheel from that sdist (so the sdist is checked to hold
everything the wheel needs), installs the wheel with ``--no-deps`` into a new venv that sees this
interpreter's site-packages for torch & co, and runs a smoke call from a folder outside the checkout: the
imported package must be the installed one, not the source tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Source folder -> where it installs (the design card's layout; setup.py discovers the same).
ROOTS = {"graphopt": "graphopt", "passes": "graphopt/passes", "backends": "graphopt/backends"}

SMOKE = """
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import graphopt
import graphopt.backends
import graphopt.passes
import graphopt.search

prefix = Path(sys.prefix).resolve()
for module in (graphopt, graphopt.passes, graphopt.backends, graphopt.search):
    assert Path(module.__file__).resolve().is_relative_to(prefix), (module.__name__, module.__file__)

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    nn.Linear(8, 4),
).eval()
x = torch.randn(1, 3, 16, 16)
calibration = [(torch.randn(1, 3, 16, 16),) for _ in range(4)]
res = graphopt.optimize(model, target="x86-int8", example_inputs=(x,), calibration_data=calibration)
path = res.export(Path(sys.argv[1]) / "m.onnx")
session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
(out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
reference = model(x).detach().numpy()
cosine = float(np.dot(out.ravel(), reference.ravel()) / np.linalg.norm(out) / np.linalg.norm(reference))
assert out.shape == (1, 4) and cosine > 0.9, cosine
print("smoke ok", sorted(graphopt.TARGETS)[:2], len(graphopt.list_passes()))
"""


def _installed_as(folder: Path) -> str:
    root, *rest = folder.parts
    return "/".join([ROOTS[root], *rest])


def _copy_checkout(destination: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "*.onnx*")
    return Path(shutil.copytree(REPO, destination, ignore=ignore))


def _build(source: Path, out: Path, hook: str) -> Path:
    """Run a PEP 517 hook of setuptools in ``source`` (no isolated build env: it would need the network)."""
    code = f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    sdist = _build(_copy_checkout(work / "checkout"), work / "sdist", "build_sdist")
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    (unpacked,) = (work / "unpacked").iterdir()
    return _build(unpacked, work / "wheels", "build_wheel")


def test_the_wheel_holds_every_package_and_no_top_level_passes_or_backends(wheel: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"graphopt"}
    installed = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    expected = {
        _installed_as(init.parent.relative_to(REPO))
        for root in ROOTS
        for init in (REPO / root).rglob("__init__.py")
    }
    assert expected <= installed, expected - installed
    assert "graphopt/verify/setup_foreign_runtime.sh" in names


def test_the_installed_wheel_optimizes_and_exports_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # pip comes from the system site-packages and installs into the venv's prefix; --no-deps: torch & co are
    # seen through system_site_packages (no network here).
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)]
    done = subprocess.run(install, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    script = outside / "smoke.py"
    script.write_text(SMOKE)
    # -I: isolated mode, so neither the current folder nor PYTHONPATH can put the source tree on sys.path;
    # the editable install's path hook in the system site-packages must lose to the venv's own package.
    run = subprocess.run(
        [str(python), "-I", str(script), str(outside)],
        cwd=outside,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "smoke ok" in run.stdout
    assert (outside / "m.onnx").is_file()
