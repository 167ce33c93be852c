"""Models named on the command line: ``pkg.module:factory`` (with an input shape) or a zoo name; and the
checked numbers the command line's flags take (argparse ``type=``: a bad count fails in one line, before
any work).

Shared by ``graphopt optimize`` and ``graphopt bench``, so both load models and fail on bad specs alike.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable

import torch
from torch import nn

from graphopt.errors import ConfigError, InvalidInputError, first_line

#: An example input larger than this (1 GiB of float32) is a typo, not a model input.
MAX_INPUT_ELEMENTS = 2**28


def positive_int(text: str) -> int:
    """An argparse ``type=`` for counts that must be at least 1 (rounds, samples, epochs of a fit)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse ``type=`` for counts where 0 means none (recovery epochs) and for seeds."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """An argparse ``type=`` for a finite amount above 0 (milliseconds, minutes)."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse ``type=`` for a finite amount of at least 0 (a tolerance)."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    """``float(text)`` unless it is not a number or is NaN or infinite (every comparison with NaN is false,
    so a NaN would pass the range checks that follow)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise InvalidInputError(
            f"--input-shape must be comma-separated integers like 1,3,224,224, got {text!r}"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise InvalidInputError(f"--input-shape must be positive integers, got {text!r}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise InvalidInputError(
            f"--input-shape {text} is {math.prod(shape):,} elements, over {MAX_INPUT_ELEMENTS:,}: give the "
            "shape of one real input (batch 1)"
        )
    return shape


def load_model(spec: str, input_shape: str | None) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A model and example input from ``pkg.module:factory`` (needs ``input_shape``) or a zoo name."""
    if ":" not in spec:
        from graphopt.zoo import get_model

        model, example = get_model(spec).build()
        return model, ((torch.randn(*parse_shape(input_shape)),) if input_shape else example)
    if input_shape is None:
        raise InvalidInputError(f"--input-shape is required for {spec!r}, e.g. --input-shape 1,3,224,224")
    factory = _import_factory(spec)
    try:
        model = factory()
    except (Exception, SystemExit) as exc:  # user code
        raise ConfigError(f"the factory {spec} raised {type(exc).__name__}: {first_line(exc)}") from exc
    return model, (torch.randn(*parse_shape(input_shape)),)


def _import_factory(spec: str) -> Callable[[], nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model must look like pkg.module:factory, got {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules in the working directory can be named
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for {spec!r}: {exc}") from exc
    except (Exception, SystemExit) as exc:  # the user's module ran and raised anything (a script's exit too)
        raise ConfigError(
            f"importing {module_name!r} for {spec!r} raised {type(exc).__name__}: {first_line(exc)}; fix the "
            "module, or name one that builds the model without side effects at import"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{module_name} has no callable {attr!r}")
    return factory
