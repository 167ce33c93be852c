"""Validation of what a caller passes to ``optimize``: the model and the example inputs."""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any

import torch
from torch import nn

from graphopt.errors import CaptureError, InvalidInputError, InvalidModelError, first_line
from graphopt.reporting.numerics import Tolerance, allclose


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        hint = " (a TorchScript module? pass the original nn.Module)" if hasattr(model, "_c") else ""
        raise InvalidModelError(f"model must be a torch.nn.Module, got {type(model).__name__}{hint}")
    if isinstance(model, torch.jit.ScriptModule):
        raise InvalidModelError("model is a TorchScript module; graphopt needs the original Python nn.Module")
    _check_weights_are_real(model)
    if _holds_int8_quantizers(model):
        raise InvalidModelError(
            "model is already quantized by graphopt (the .model of an int8 result): pruning or quantizing it "
            "again would work on simulated int8 weights. Optimize the original fp32 model with the options "
            "combined (prune=..., target='x86-int8')"
        )
    return model


def _check_weights_are_real(model: nn.Module) -> None:
    """A model built on the meta device (``torch.device("meta")``, ``init_empty_weights``) has shapes but no
    values: every run graphopt makes would fail deep inside torch, or compare nothing."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    on_meta = [name for name, t in tensors if t.is_meta]
    if on_meta:
        shown = ", ".join(on_meta[:3]) + (f" and {len(on_meta) - 3} more" if len(on_meta) > 3 else "")
        raise InvalidModelError(
            f"the model's {shown} are on the meta device: they have a shape but no values. Load real weights "
            "first, e.g. model.to_empty(device='cpu') then model.load_state_dict(torch.load(path))"
        )


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
        check_tensor_kind(f"example_inputs[{i}]", x)
        _check_example_tensor(i, x)
    # Copies: graphopt runs the model on them many times, and a forward that writes into its input must
    # not reach the caller's tensors.
    return tuple(x.detach().clone() for x in example_inputs)


def check_tensor_kind(what: str, x: torch.Tensor) -> None:
    """Capture, shape propagation and every numeric check need an ordinary dense tensor with values;
    ``what`` names the tensor in the message (``"example_inputs[0]"``)."""
    if x.is_meta:
        raise InvalidInputError(
            f"{what} is on the meta device: it has a shape but no values, and graphopt runs the model on "
            f"its inputs. Give a real tensor of that shape, e.g. torch.randn{tuple(x.shape)}"
        )
    if x.is_nested:
        raise InvalidInputError(
            f"{what} is a nested tensor; graphopt captures models on dense tensors: give a padded one "
            "(x.to_padded_tensor(0.0)) shaped like a real batch"
        )
    if x.layout != torch.strided:
        raise InvalidInputError(
            f"{what} is a sparse tensor (layout {x.layout}); graphopt captures models on dense tensors: "
            "give x.to_dense()"
        )
    if x.is_quantized:
        raise InvalidInputError(
            f"{what} is a quantized tensor ({x.dtype}); graphopt takes the float model and float inputs "
            "and quantizes itself (target='x86-int8' or 'arm-int8'): give x.dequantize()"
        )


def _check_example_tensor(i: int, x: torch.Tensor) -> None:
    """Every check downstream (capture, exactness, the artifact) compares outputs on these inputs: empty or
    non-finite ones would make each comparison vacuous or NaN."""
    if x.numel() == 0:
        raise InvalidInputError(
            f"example_inputs[{i}] has shape {tuple(x.shape)}, with no elements (batch 0?): every check "
            "compares outputs on the example inputs, so give at least one real sample"
        )
    if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
        raise InvalidInputError(
            f"example_inputs[{i}] contains NaN or inf: give finite values shaped like a real input"
        )


def private_eval_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode, so nothing graphopt does can reach the caller's model: it shares no module,
    parameter, buffer, hook dict or parametrized class with ``model``."""
    try:
        with warnings.catch_warnings():  # torch's own deprecation chatter from copying exported modules
            warnings.simplefilter("ignore", FutureWarning)
            clone = copy.deepcopy(model, _computed_weights_memo(model))
    except Exception as exc:  # deepcopy runs user __deepcopy__ / __getstate__ code
        raise InvalidModelError(
            f"the model cannot be deep-copied ({type(exc).__name__}: {first_line(exc)}); graphopt works on a "
            "private copy so that it never changes your model: make copy.deepcopy(model) work"
        ) from exc
    _check_independent(model, clone)
    for module in clone.modules():
        _give_own_parametrized_class(module)
    return clone.eval()


def _computed_weights_memo(model: nn.Module) -> dict[int, Any]:
    """A deepcopy memo that copies every non-leaf tensor attribute as a detached copy. The hook-based
    ``torch.nn.utils.weight_norm`` / ``spectral_norm`` keep ``module.weight`` as the output of the last
    forward, which ``deepcopy`` refuses once that forward ran with autograd on; the hook recomputes it from
    ``weight_g``/``weight_v`` (``weight_orig``) on every call, so a detached value is as good."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return memo


def _check_independent(model: nn.Module, clone: nn.Module) -> None:
    """A ``__deepcopy__`` that returns ``self`` or copies shallowly would let graphopt's eval(), baking,
    pruning and training reach the caller's model through the shared objects."""
    theirs = _owned_objects(model)
    shared = [what for key, what in _owned_objects(clone).items() if key in theirs]
    shared.sort(key=lambda what: what.startswith("_"))  # modules and tensors first: what the user named
    if shared:
        raise InvalidModelError(
            f"copy.deepcopy(model) shares {', '.join(shared[:3])} with the model itself (a custom "
            "__deepcopy__?); graphopt works on a private copy so that it never changes your model: make "
            "deepcopy copy every submodule, parameter and buffer"
        )


def _owned_objects(model: nn.Module) -> dict[tuple[str, int], str]:
    """Everything of ``model`` that graphopt may change in place, keyed by identity (tensors also by storage,
    so two Parameter objects over one storage count as shared)."""
    owned: dict[tuple[str, int], str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        where = name or "the model"
        owned["object", id(module)] = f"submodule {name}" if name else "the model object itself"
        for container in ("_parameters", "_buffers", "_modules", "_forward_hooks", "_forward_pre_hooks"):
            owned["object", id(getattr(module, container))] = f"{container} of {where}"
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, t in tensors:
        owned["object", id(t)] = f"tensor {name}"
        pointer = _storage_pointer(t)
        if pointer:
            owned["storage", pointer] = f"the storage of {name}"
    return owned


def _storage_pointer(t: torch.Tensor) -> int | None:
    """Where ``t``'s values live; ``None`` for tensors without a storage of their own (meta, sparse, wrapper
    subclasses) or with no elements (pointer 0)."""
    if t.is_meta or t.layout != torch.strided:
        return None
    try:
        return t.untyped_storage().data_ptr() or None
    except (RuntimeError, NotImplementedError):  # tensor subclasses that wrap others have no storage
        return None


def _give_own_parametrized_class(module: nn.Module) -> None:
    """``register_parametrization`` puts each tensor's property on a generated ``Parametrized<Cls>`` class,
    and ``deepcopy`` keeps the class object: removing a parametrization from graphopt's copy deleted the
    property from the caller's module too (which then had no ``weight``). A copy of that class, over the
    same base, makes the copy's properties its own."""
    from torch.nn.utils import parametrize

    shared = type(module)
    if not parametrize.is_parametrized(module) or shared.__module__ != parametrize.__name__:
        return  # only the classes torch generates: a copy of the user's own class would fail isinstance
    namespace = {k: v for k, v in vars(shared).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(shared.__name__, shared.__bases__, namespace)


def run_reference(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Any:
    """The model's outputs on the example inputs; a failure means the inputs do not fit the model."""
    untouched = tuple(x.clone() for x in example_inputs)
    try:
        with torch.no_grad():
            outputs = model(*example_inputs)
    except Exception as exc:  # whatever the model raises on inputs that do not fit it
        shapes = ", ".join(f"{tuple(x.shape)} {x.dtype}" for x in example_inputs)
        raise InvalidInputError(
            f"the model fails on example_inputs of shape {shapes}: {type(exc).__name__}: {exc}. "
            "Give inputs shaped and typed like the model's real inputs."
        ) from exc
    _check_inputs_unchanged(example_inputs, untouched)
    _check_top_level_hooks(model, example_inputs, outputs)
    return outputs


def _check_top_level_hooks(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], outputs: Any) -> None:
    """Capture traces ``model.forward``, which does not run the forward (pre-)hooks of the model itself:
    hooks that only observe are harmless to lose, hooks that change the outputs are not. (Hooks of
    submodules are called through ``__call__`` and stay.)"""
    if not _forward_hooks_of(model):
        return
    try:
        with torch.no_grad():
            without_hooks = model.forward(*example_inputs)
        same = allclose(outputs, without_hooks, Tolerance(rtol=1e-6, atol=1e-7))[0]
    except Exception:  # a forward that needs what a pre-hook does to its inputs: the hooks matter
        same = False
    if not same:
        raise CaptureError(
            f"the model's own forward hooks or pre-hooks ({', '.join(_forward_hooks_of(model))}) change "
            "its outputs, and capture traces model.forward, which does not run them. Wrap the model in a "
            "module whose forward calls it (its hooks are then captured), or move their computation into "
            "forward"
        )


def _forward_hooks_of(module: nn.Module) -> list[str]:
    """The names of the forward and forward pre-hooks registered on ``module`` itself."""
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
    return [getattr(hook, "__name__", type(hook).__name__) for hook in hooks]


def _check_inputs_unchanged(inputs: tuple[torch.Tensor, ...], untouched: tuple[torch.Tensor, ...]) -> None:
    """graphopt runs the model many times on the same inputs (capture, every check, calibration): a forward
    that writes into its input sees different values each time, and no comparison would hold. (The inputs
    are finite, checked before, so ``torch.equal`` is exact here.)"""
    for i, (x, before) in enumerate(zip(inputs, untouched, strict=True)):
        if not torch.equal(x, before):
            raise InvalidInputError(
                f"the model's forward writes into its input {i} (an in-place op such as x.mul_() or "
                "x += ... on the input): graphopt runs the model many times on the same example inputs. "
                "Make that op out of place (x = x * 2)"
            )


def bake_parametrizations(model: nn.Module) -> list[str]:
    """Replace every parametrized tensor (``weight_norm``, ``spectral_norm``, ``orthogonal``) of graphopt's
    private copy with its current value, so layers are plain ``nn.Conv2d`` / ``nn.Linear`` again (same
    outputs; passes and int8 recognise them). Returns the tensors baked. Training stages then train the
    plain weight, not the parametrization's factors."""
    from torch.nn.utils import parametrize

    baked = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        baked += [prefix + tensor for tensor in _bake_norm_hooks(module)]
        if parametrize.is_parametrized(module):
            _give_own_parametrized_class(module)  # removing edits the class: never one the caller shares
            for tensor_name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
                baked.append(prefix + tensor_name)
    return baked


def _bake_norm_hooks(module: nn.Module) -> list[str]:
    """The deprecated hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm`` recompute ``weight`` in
    a forward pre-hook on every call, over whatever a pass wrote there (a folded or pruned weight); removing
    them leaves the current weight as a plain Parameter (spectral norm without a power-iteration step)."""
    from torch.nn.utils import remove_spectral_norm, remove_weight_norm
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    removers = {WeightNorm: remove_weight_norm, SpectralNorm: remove_spectral_norm}
    baked = []
    for hook in list(module._forward_pre_hooks.values()):
        remove = removers.get(type(hook))
        if remove is not None:
            with torch.no_grad():
                remove(module, hook.name)
            baked.append(hook.name)
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
