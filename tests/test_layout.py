"""The source layout stays readable: the top of ``graphopt/`` is the public surface, every other module sits
in the subpackage of its role, and every module type a pass can put into a graph is listed in one place
(:mod:`graphopt.ir.extensions`) that backend authors read."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

from torch import nn

import graphopt
from graphopt.ir.extensions import EXTENSION_TYPES

REPO = Path(__file__).resolve().parent.parent

#: The modules allowed directly in graphopt/: the facade, the option and target declarations, errors, and
#: the command line. Anything else belongs in a role subpackage (docs/layout.md says which).
TOP_LEVEL = {"__init__", "api", "call_options", "cli", "demo", "distill", "errors", "model_spec", "targets"}

#: Packages whose ``nn.Module`` classes are not IR extension types: example models, data sets, training
#: losses, and a backend's own lowered forms (they appear only inside the backend, never in the IR that
#: passes hand over).
NOT_IR = ("graphopt.zoo", "graphopt.data", "graphopt.benchmark", "graphopt.recovery", "graphopt.backends")


def test_top_of_the_package_is_the_public_surface():
    flat = {path.stem for path in (REPO / "graphopt").glob("*.py")}
    assert flat == TOP_LEVEL, f"modules to move into a role subpackage: {sorted(flat - TOP_LEVEL)}"


def _graphopt_modules():
    for info in pkgutil.walk_packages(graphopt.__path__, "graphopt."):
        if not info.name.startswith(NOT_IR) and "verify" not in info.name:
            yield importlib.import_module(info.name)


def test_every_module_type_a_pass_inserts_is_an_extension_type():
    own_modules = {
        cls
        for module in [*_graphopt_modules(), *(importlib.import_module(f"graphopt.passes.{m.name}")
                                                for m in pkgutil.iter_modules(graphopt.passes.__path__))]
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, nn.Module) and cls.__module__ == module.__name__
    }  # fmt: skip
    missing = {f"{c.__module__}.{c.__qualname__}" for c in own_modules - set(EXTENSION_TYPES)}
    assert not missing, f"add these to graphopt/ir/extensions.py (and docs/writing-a-backend.md): {missing}"


def test_the_backend_guide_names_every_extension_type():
    guide = (REPO / "docs" / "writing-a-backend.md").read_text()
    assert [t.__name__ for t in EXTENSION_TYPES if f"`{t.__name__}`" not in guide] == []
