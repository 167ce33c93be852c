"""The pass registry: the explicit built-in list plus what outside authors register.

Nothing registers at import time except the built-in list in :mod:`graphopt.passes`, which is read lazily
the first time the registry is used.
"""

from __future__ import annotations

from graphopt.errors import ConfigError, UnknownNameError
from graphopt.pipeline.pass_base import Pass, PassOptions

_registered: dict[str, type[Pass]] = {}
_builtins_loaded = False


def _registry() -> dict[str, type[Pass]]:
    global _builtins_loaded
    if not _builtins_loaded:
        from graphopt.passes import BUILTIN_PASSES

        _builtins_loaded = True
        for cls in BUILTIN_PASSES:
            register_pass(cls)
    return _registered


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Register an outside pass class so it can be named in ``passes=[...]`` and targets.

    Usable as a decorator. Registering the same class twice is a no-op; another class under a taken name
    is an error.
    """
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise ConfigError(f"register_pass takes a Pass subclass, got {cls!r}")
    for attr, kind in (("name", str), ("description", str), ("exact", bool)):
        if not isinstance(getattr(cls, attr, None), kind):
            raise ConfigError(f"pass class {cls.__name__} must define {attr!r} as a {kind.__name__}")
    if not cls.name.isidentifier():
        raise ConfigError(f"pass name {cls.name!r} must be a Python identifier (its module stem)")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, PassOptions)):
        raise ConfigError(f"pass class {cls.__name__}.Options must subclass PassOptions")
    registry = _registry() if _builtins_loaded else _registered
    existing = registry.get(cls.name)
    if existing is not None and existing is not cls:
        raise ConfigError(f"a different pass is already registered as {cls.name!r}: {existing.__qualname__}")
    registry[cls.name] = cls
    return cls


def list_passes() -> dict[str, str]:
    """Registered pass names with their one-line descriptions, sorted by name."""
    return {name: cls.description for name, cls in sorted(_registry().items())}


def pass_class(name: str) -> type[Pass]:
    """The pass class registered under ``name``."""
    registry = _registry()
    if name not in registry:
        raise UnknownNameError("pass", name, registry)
    return registry[name]


def make_pass(spec: str | Pass, options: PassOptions | None = None) -> Pass:
    """A pass instance from a registered name (with optional options) or an instance given as is."""
    if isinstance(spec, Pass):
        return spec
    if isinstance(spec, str):
        return pass_class(spec)(options)
    raise ConfigError(f"a pipeline entry must be a pass name or a Pass instance, got {type(spec).__name__}")
