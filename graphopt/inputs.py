"""Validation of what a caller passes to ``optimize``: the model and the example inputs."""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any

import torch
from torch import nn

from graphopt.errors import InvalidInputError, InvalidModelError


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        hint = " (a TorchScript module? pass the original nn.Module)" if hasattr(model, "_c") else ""
        raise InvalidModelError(f"model must be a torch.nn.Module, got {type(model).__name__}{hint}")
    if isinstance(model, torch.jit.ScriptModule):
        raise InvalidModelError("model is a TorchScript module; graphopt needs the original Python nn.Module")
    if _holds_int8_quantizers(model):
        raise InvalidModelError(
            "model is already quantized by graphopt (the .model of an int8 result): pruning or quantizing it "
            "again would work on simulated int8 weights. Optimize the original fp32 model with the options "
            "combined (prune=..., target='x86-int8')"
        )
    return model


def _holds_int8_quantizers(model: nn.Module) -> bool:
    from graphopt.quant import is_quantized  # the quant package imports the pass machinery

    return is_quantized(model)


def check_example_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """A tuple of tensors; a lone tensor is wrapped. Anything else is an :class:`InvalidInputError`."""
    if example_inputs is None:
        raise InvalidInputError(
            "example_inputs is required: a tuple of tensors shaped like one real input, e.g. "
            "example_inputs=(torch.randn(1, 3, 224, 224),); capture and shape propagation run on it"
        )
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, tuple):
        raise InvalidInputError(
            f"example_inputs must be a tuple of tensors, got {type(example_inputs).__name__}; "
            "wrap a single tensor as (x,)"
        )
    if not example_inputs:
        raise InvalidInputError("example_inputs is an empty tuple; give at least one tensor")
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(f"example_inputs[{i}] must be a torch.Tensor, got {type(x).__name__}")
        _check_example_tensor(i, x)
    return tuple(x.detach() for x in example_inputs)


def _check_example_tensor(i: int, x: torch.Tensor) -> None:
    """Every check downstream (capture, exactness, the artifact) compares outputs on these inputs: empty or
    non-finite ones would make each comparison vacuous or NaN."""
    if x.numel() == 0:
        raise InvalidInputError(
            f"example_inputs[{i}] has shape {tuple(x.shape)}, with no elements (batch 0?): every check "
            "compares outputs on the example inputs, so give at least one real sample"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise InvalidInputError(
            f"example_inputs[{i}] contains NaN or inf: give finite values shaped like a real input"
        )


def private_eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode, so nothing graphopt does can reach the caller's model."""
    try:
        with warnings.catch_warnings():  # torch's own deprecation chatter from copying exported modules
            warnings.simplefilter("ignore", FutureWarning)
            clone = copy.deepcopy(model)
    except Exception as exc:  # deepcopy runs user __deepcopy__ / __getstate__ code
        raise InvalidModelError(f"the model cannot be deep-copied ({type(exc).__name__}: {exc})") from exc
    return clone.eval()


def run_reference(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Any:
    """The model's outputs on the example inputs; a failure means the inputs do not fit the model."""
    try:
        with torch.no_grad():
            return model(*example_inputs)
    except Exception as exc:  # whatever the model raises on inputs that do not fit it
        shapes = ", ".join(f"{tuple(x.shape)} {x.dtype}" for x in example_inputs)
        raise InvalidInputError(
            f"the model fails on example_inputs of shape {shapes}: {type(exc).__name__}: {exc}. "
            "Give inputs shaped and typed like the model's real inputs."
        ) from exc


def bake_parametrizations(model: nn.Module) -> list[str]:
    """Replace every parametrized tensor (``weight_norm``, ``spectral_norm``, ``orthogonal``) of graphopt's
    private copy with its current value, so layers are plain ``nn.Conv2d`` / ``nn.Linear`` again (same
    outputs; passes and int8 recognise them). Returns the tensors baked. Training stages then train the
    plain weight, not the parametrization's factors."""
    from torch.nn.utils import parametrize

    baked = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
                baked.append(f"{name}.{tensor_name}" if name else tensor_name)
    return baked


def input_names(model: nn.Module, count: int) -> list[str]:
    """The names of ``model.forward``'s first ``count`` positional parameters (``input_{i}`` past them)."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a builtin or C++ forward without a signature
        parameters = []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in parameters if p.kind in positional]
    return [names[i] if i < len(names) else f"input_{i}" for i in range(count)]
