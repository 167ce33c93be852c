"""The caller's model is never touched by ``graphopt.optimize`` (issue 38).

A state-dict digest misses most ways of breaking a model: ``remove_parametrizations`` on graphopt's copy once
deleted the ``weight`` property from the ``Parametrized<Cls>`` class that copy and original share, so the
caller's model raised AttributeError afterwards with an unchanged state dict. So each case records the
caller's model in full (classes and their attributes, parametrizations, every hook dict, training and
requires_grad flags, every tensor including non-persistent buffers and parametrization originals, tied
weights) and its behaviour (outputs, input gradients through backward hooks), runs ``optimize``, and asserts
all of it is the same. Where graphopt cannot handle a case it must refuse with a GraphoptError, and the
model must still be untouched.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import graphopt
from graphopt import GraphoptError

#: Every per-module hook dict torch keeps (missing ones are skipped, for other torch versions).
HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_backward_pre_hooks", "_backward_hooks",
    "_state_dict_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)  # fmt: skip
CALIBRATION = [torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]


class Tiny(nn.Module):
    """Two convs and three linears: the smallest model that int8 and channel pruning both rewrite. The
    non-persistent buffer is in every case: it is not in the state dict, so only a behaviour check sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)
        self.register_buffer("shift", torch.linspace(-0.5, 0.5, 3).view(3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x - self.shift))
        y = torch.relu(self.conv2(y)).mean((2, 3))
        return self.head(torch.relu(self.fc2(torch.relu(self.fc(y)))))


class Symmetric(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w.triu() + w.triu(1).transpose(-1, -2)


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("factor", torch.tensor(1.5))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.factor


def _register_scale(module: nn.Module) -> None:
    parametrize.register_parametrization(module, "weight", Scale())


def _deprecated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The hook-based ``torch.nn.utils.weight_norm`` / ``spectral_norm`` warn that they are deprecated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return fn(*args, **kwargs)


def _observe(module: nn.Module, inputs: Any, output: Any) -> None:
    """A forward hook that changes nothing."""


def _observe_kwargs(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
    """A forward hook registered ``with_kwargs=True`` that changes nothing."""


def _double_output(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return output * 2


def _pre_identity(module: nn.Module, inputs: Any) -> None:
    """A forward pre-hook that changes nothing."""


def _backward_hook(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
    """A full backward hook that changes nothing."""


def _state_dict_hook(module: nn.Module, state_dict: Any, prefix: str, local_metadata: Any) -> None:
    """A state_dict post-hook that leaves the state dict as it is."""


def _state_dict_pre_hook(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    """A state_dict pre-hook that changes nothing."""


def _load_pre_hook(*args: Any) -> None:
    """A load_state_dict pre-hook that changes nothing."""


def _load_post_hook(module: nn.Module, incompatible_keys: Any) -> None:
    """A load_state_dict post-hook that changes nothing."""


def _old_norms(model: Tiny) -> None:
    """Pruning slices ``conv2.weight``; the hooks would rebuild it from the unsliced ``weight_v``."""
    _deprecated(nn.utils.weight_norm, model.conv2)
    _deprecated(nn.utils.spectral_norm, model.fc)


def _tie(model: Tiny) -> None:
    model.fc2.weight = model.fc.weight


def _freeze_first_conv(model: Tiny) -> None:
    model.conv.requires_grad_(False)


def _all_hooks(model: Tiny) -> None:
    """Every kind of hook at once, on a leaf conv (called through the graph) and on the root (which capture
    does not call through ``__call__``)."""
    for module in (model, model.conv):
        module.register_forward_pre_hook(_pre_identity)
        module.register_forward_hook(_observe)
        module.register_forward_hook(_observe_kwargs, with_kwargs=True)
        module.register_full_backward_hook(_backward_hook)
        module._register_state_dict_hook(_state_dict_hook)
        module.register_state_dict_pre_hook(_state_dict_pre_hook)
        module._register_load_state_dict_pre_hook(_load_pre_hook)
        module.register_load_state_dict_post_hook(_load_post_hook)


@dataclass(frozen=True)
class Case:
    """How to alter :class:`Tiny`, which target runs it, and whether graphopt may refuse it (``refuses``:
    a regular expression the GraphoptError must match; ``None``: optimize must succeed)."""

    name: str
    alter: Callable[[Tiny], Any]
    target: str = "generic-fp32"
    prune: float = 0.0
    train: bool = False  # the caller's model in train mode (its flag must stay so)
    refuses: str | None = None

    def options(self) -> dict[str, Any]:
        calibration = {"calibration_data": CALIBRATION} if self.target.endswith("int8") else {}
        return {"target": self.target, "prune": self.prune, **calibration}


CASES = [
    Case("plain", lambda m: None, train=True),
    Case("weight_norm", lambda m: parametrizations.weight_norm(m.conv), train=True),
    Case("weight_norm_int8", lambda m: parametrizations.weight_norm(m.conv), "x86-int8"),
    Case("spectral_norm", lambda m: parametrizations.spectral_norm(m.fc)),
    Case("spectral_norm_int8", lambda m: parametrizations.spectral_norm(m.fc), "x86-int8"),
    Case("orthogonal", lambda m: parametrizations.orthogonal(m.fc), train=True),
    Case("custom_symmetric", lambda m: parametrize.register_parametrization(m.fc2, "weight", Symmetric())),
    Case("custom_scale_pruned", lambda m: _register_scale(m.conv2), prune=0.5),
    Case("old_weight_norm", lambda m: _deprecated(nn.utils.weight_norm, m.conv), train=True),
    Case("old_weight_norm_int8", lambda m: _deprecated(nn.utils.weight_norm, m.conv), "x86-int8"),
    Case("old_spectral_norm", lambda m: _deprecated(nn.utils.spectral_norm, m.fc)),
    Case("old_norms_pruned", _old_norms, prune=0.5),
    Case("all_hooks", _all_hooks, train=True),
    Case("all_hooks_int8", _all_hooks, "x86-int8"),
    Case("output_changing_leaf_hook", lambda m: m.conv2.register_forward_hook(_double_output)),
    Case(
        "output_changing_root_hook",
        lambda m: m.register_forward_hook(_double_output),
        refuses=r"own forward hooks or pre-hooks \(_double_output\) change its outputs.*Wrap the model",
    ),
    Case("nonpersistent_buffer_pruned", lambda m: None, prune=0.5),
    Case("tied_weights", _tie, train=True),
    Case("tied_weights_int8", _tie, "x86-int8"),
    Case("frozen_layer", _freeze_first_conv, "x86-int8", train=True),
]


# -- what the caller's model is --------------------------------------------------------------------------
def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Everything about ``model`` that graphopt must leave as it is, as comparable values (tensors cloned)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    return {
        "classes": {name: type(m) for name, m in modules.items()},
        "class_attributes": {name: _class_attributes(type(m)) for name, m in modules.items()},
        "training": {name: m.training for name, m in modules.items()},
        "parametrizations": {name: _parametrizations(m) for name, m in modules.items()},
        "hooks": {name: _hooks(m) for name, m in modules.items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)},
        "tied": _tied(model),
        "tensors": {name: t.detach().clone() for name, t in _tensors(model)},
        "state_dict_keys": list(model.state_dict()),
    }


def _class_attributes(cls: type) -> dict[str, dict[str, int]]:
    """The own attributes of every class in the MRO (a deleted property shows here), but ``__slotnames__``:
    a cache that ``copy.deepcopy`` (``copyreg``) writes on the first copy of any instance of a class."""
    return {
        klass.__qualname__: {k: id(v) for k, v in vars(klass).items() if k != "__slotnames__"}
        for klass in cls.__mro__
    }


def _parametrizations(module: nn.Module) -> dict[str, list[type]]:
    if not parametrize.is_parametrized(module):
        return {}
    return {name: [type(p) for p in plist] for name, plist in module.parametrizations.items()}


def _hooks(module: nn.Module) -> dict[str, Any]:
    dicts = {name: getattr(module, name) for name in HOOK_DICTS if hasattr(module, name)}
    hooks: dict[str, Any] = {name: [(k, id(v)) for k, v in d.items()] for name, d in dicts.items()}
    hooks["_is_full_backward_hook"] = getattr(module, "_is_full_backward_hook", None)
    return hooks


def _tied(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one Parameter object."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return sorted(g for g in groups.values() if len(g) > 1)


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    params = model.named_parameters(remove_duplicate=False)
    return [*params, *model.named_buffers(remove_duplicate=False)]


def assert_same_fingerprint(after: dict[str, Any], before: dict[str, Any]) -> None:
    for key, value in before.items():
        if key != "tensors":
            assert after[key] == value, f"the caller's model changed: {key}"
    tensors_before, tensors_after = before["tensors"], after["tensors"]
    assert tensors_after.keys() == tensors_before.keys()
    for name, value in tensors_before.items():
        assert torch.equal(tensors_after[name], value), f"the caller's {name} was mutated"


def behaviour(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs and the input gradient (through any backward hooks). ``autograd.grad`` does not write
    ``.grad`` into the caller's parameters, so measuring the behaviour does not change the model."""
    x = x.clone().requires_grad_(True)
    output = model(x)
    (grad,) = torch.autograd.grad(output.sum(), x)
    return output.detach(), grad


# -- the property ----------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _one_thread():
    """An 8x8 conv takes 20 us on one thread and milliseconds when two threads wait on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_optimize_leaves_the_callers_model_untouched(case: Case) -> None:
    model = Tiny()
    case.alter(model)
    model.train(case.train)
    x = torch.randn(1, 3, 8, 8)
    before = fingerprint(model)
    out, grad = behaviour(model, x)
    assert_same_fingerprint(fingerprint(model), before)  # measuring does not change it: the test can fail
    refused: GraphoptError | None = None
    try:
        result = graphopt.optimize(model, example_inputs=(x,), **case.options())
    except GraphoptError as exc:
        refused = exc
    assert_same_fingerprint(fingerprint(model), before)
    out_after, grad_after = behaviour(model, x)
    assert torch.equal(out_after, out)
    assert torch.equal(grad_after, grad)
    if case.refuses is not None:
        assert refused is not None, f"{case.name}: optimize should refuse"
        assert re.search(case.refuses, str(refused)), str(refused)  # the message names the cause
        return
    assert refused is None, f"{case.name}: {refused}"
    with torch.no_grad():
        optimized = result.model(x)
    if case.target == "generic-fp32" and case.prune == 0.0:
        torch.testing.assert_close(optimized, out, rtol=1e-5, atol=1e-5)  # an exact pipeline
    else:
        assert optimized.shape == out.shape and bool(torch.isfinite(optimized).all())


# -- unusual inputs and devices ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: torch.randn(x.shape, device="meta"), r"on the meta device.*torch\.randn\(1, 3, 8, 8\)"),
        (lambda x: x.to_sparse(), r"sparse tensor \(layout torch\.sparse_coo\).*x\.to_dense\(\)"),
        (lambda x: x[0, 0].to_sparse_csr(), r"sparse tensor \(layout torch\.sparse_csr\)"),
        (lambda x: torch.nested.nested_tensor([x[0], x[0]]), r"nested tensor.*to_padded_tensor"),
        (
            lambda x: torch.quantize_per_tensor(x, 0.1, 0, torch.quint8),
            r"quantized tensor \(torch\.quint8\).*x\.dequantize\(\)",
        ),
        (lambda x: torch.full(x.shape, complex("nan")), "NaN or inf"),
    ],
    ids=["meta", "sparse-coo", "sparse-csr", "nested", "quantized", "complex-nan"],
)
def test_example_inputs_without_dense_real_values_are_refused(make, message):
    with (
        warnings.catch_warnings()
    ):  # torch warns that CSR, nested and quantized tensors are beta or deprecated
        warnings.simplefilter("ignore", UserWarning)
        x = make(torch.randn(1, 3, 8, 8))
    with pytest.raises(graphopt.InvalidInputError, match=message):
        graphopt.optimize(Tiny().eval(), example_inputs=(x,))


@pytest.mark.parametrize("where", ["model", "one buffer"])
def test_a_model_with_weights_on_the_meta_device_is_refused(where):
    model = Tiny()
    if where == "model":
        model = model.to("meta")
    else:
        model.register_buffer("empty", torch.empty(3, device="meta"))
    with pytest.raises(graphopt.InvalidModelError, match=r"on the meta device.*to_empty.*load_state_dict"):
        graphopt.optimize(model, example_inputs=(torch.randn(1, 3, 8, 8),))


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(1, 3, 8, 8, requires_grad=True),
        lambda: torch.randn(1, 8, 8, 3).permute(0, 3, 1, 2),  # not contiguous
        lambda: torch.randn(1, 3, 8, 8).to(memory_format=torch.channels_last),
        lambda: torch.randn(1, 3, 8, 1).expand(1, 3, 8, 8),  # stride 0
    ],
    ids=["requires-grad", "permuted", "channels-last", "expanded"],
)
def test_unusual_but_dense_example_inputs_work_and_stay_as_given(make):
    model, x = Tiny().eval(), make()
    strides, requires_grad, values = x.stride(), x.requires_grad, x.detach().clone()
    result = graphopt.optimize(model, example_inputs=(x,))
    assert (x.stride(), x.requires_grad) == (strides, requires_grad)
    assert torch.equal(x.detach(), values)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


class WritesIntoInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mul_(2))


def test_a_forward_that_writes_into_its_input_is_refused_and_the_callers_input_kept():
    x = torch.ones(2, 4)
    with pytest.raises(graphopt.InvalidInputError, match=r"writes into its input 0.*out of place"):
        graphopt.optimize(WritesIntoInput(), example_inputs=(x,))
    assert torch.equal(x, torch.ones(2, 4))


class ReturnsItself(Tiny):
    def __deepcopy__(self, memo: dict[int, Any]) -> ReturnsItself:
        return self


class CopiesShallowly(Tiny):
    def __deepcopy__(self, memo: dict[int, Any]) -> CopiesShallowly:
        clone = self.__class__.__new__(self.__class__)
        clone.__dict__ = dict(self.__dict__)  # the same _parameters and _modules dicts
        return clone


@pytest.mark.parametrize(
    ("cls", "message"),
    [(ReturnsItself, "the model object itself"), (CopiesShallowly, "submodule conv")],
    ids=["returns-self", "shallow"],
)
def test_a_deepcopy_that_shares_the_model_is_refused(cls, message):
    """graphopt's eval(), pruning and requires_grad changes would otherwise land on the caller's model."""
    model = cls().train()
    model.conv.requires_grad_(False)
    before = fingerprint(model)
    with pytest.raises(graphopt.InvalidModelError, match=rf"copy\.deepcopy\(model\) shares {message}"):
        graphopt.optimize(model, example_inputs=(torch.randn(1, 3, 8, 8),), prune=0.5)
    assert_same_fingerprint(fingerprint(model), before)


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_the_wrapper_the_top_level_hook_message_suggests_captures_the_hook():
    model = Tiny().eval()
    model.register_forward_hook(_double_output)
    x = torch.randn(1, 3, 8, 8)
    result = graphopt.optimize(Wrapper(model), example_inputs=(x,))
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
