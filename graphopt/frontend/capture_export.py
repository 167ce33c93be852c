"""Capture through ``torch.export`` and lift to the module-level IR (:mod:`graphopt.frontend.lift`).

Used where symbolic tracing fails or would leave opaque leaves. The batch dimension of every input is
dynamic (a batch-1 example is repeated to 2 for tracing, as torch.export specialises size 1), and so are the
dimensions the caller names in :class:`DynamicDims` (a sequence length): torch.export sees them as symbols,
so the lifted graph reads them with ``x.size(d)`` and runs at any size. A model that fixes its batch
(``x.view(1, -1)``) is exported with the batch static instead (``Dim.AUTO`` specialises it), never refused
for it; a model that fixes a dim the caller *named* dynamic is refused with that dim, why and the fix
(:class:`DimDiagnosis`), on either capture path (:func:`check_dynamic_dims` for what torch.fx captured).
"""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn
from torch.export import Dim

from graphopt.backends.quiet import quiet_export
from graphopt.data.dims import DynamicDims
from graphopt.errors import CaptureError, ConfigError, first_line
from graphopt.frontend.batch_dims import widen_batch
from graphopt.frontend.lift import lift


def export_program(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> torch.export.ExportedProgram:
    """``torch.export`` with the batch dynamic where the model allows (``Dim.AUTO``) and the named dims
    dynamic (``Dim.DYNAMIC``: export infers their ranges, such as a maximum sequence length, and that
    inputs sharing a name share the size; it refuses only a model that fixes one: :class:`ConfigError`
    naming that dim)."""
    try:
        return _export(model, widen_batch(example_inputs), dynamic)
    except Exception as exc:  # torch.export raises many types: the message is what the user needs
        _refuse_fixed_dims(model, example_inputs, dynamic, exc)
        where = user_frame(exc)
        raise CaptureError(
            f"torch.export cannot capture {type(model).__name__} either ({type(exc).__name__}: "
            f"{first_line(exc)}){f' at {where}' if where else ''}. Data-dependent Python control flow must "
            f"become torch.cond or torch.where, or move out of the model: {_network_hint(model)}"
        ) from exc


def check_dynamic_dims(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> None:
    """For a model torch.fx captured: :class:`ConfigError` when its code fixes a dim ``dynamic`` names,
    found by torch.export as capture through it would (the fx graph keeps the Python that fixes it, and
    the artifact would fail at any other size). Nothing when torch.export fails for another reason."""
    if not dynamic.named():
        return
    try:
        _export(model, widen_batch(example_inputs), dynamic)
    except Exception as exc:  # torch.export raises many types; only a dynamic dim's failure is refused
        _refuse_fixed_dims(model, example_inputs, dynamic, exc)


def _export(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> torch.export.ExportedProgram:
    shapes = []
    for x, dims in zip(inputs, dynamic.dims or [{}] * len(inputs), strict=True):
        entry = {0: Dim.AUTO, **dict.fromkeys(dims, Dim.DYNAMIC)} if x.dim() > 0 else None
        shapes.append(entry)
    with quiet_export():
        return torch.export.export(model, inputs, dynamic_shapes=tuple(shapes), strict=False)


def _refuse_fixed_dims(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims, exc: Exception
) -> None:
    """Raise :class:`ConfigError` when ``exc`` (torch.export with ``dynamic``) is caused by a named dim:
    the model exports with that dim static and fails with it dynamic."""
    if not dynamic.named():
        return
    problem = DimDiagnosis(model, example_inputs, dynamic).problem()
    if problem is not None:
        raise ConfigError(problem) from exc


_SPECIALISED = re.compile(r"specialized it to be a constant \((-?\d+)\)")


class DimDiagnosis:
    """Which named dim makes torch.export fail, and why: the model fixes it (a view to a constant size, a
    Linear over it), or ties it to a dim of another input that is not declared. Runs only after a failure:
    a few more exports of the same model, each with fewer dims dynamic."""

    def __init__(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims):
        self.model, self.dynamic = model, dynamic
        # The batch widened to 2 as capture does; the example as given for a model that fixes the batch.
        self.examples = [widen_batch(example_inputs)]
        if any(a.shape != b.shape for a, b in zip(self.examples[0], example_inputs, strict=True)):
            self.examples.append(example_inputs)

    def problem(self) -> str | None:
        """The message naming the dim, the cause and the fix; None when the failure is not the dims'."""
        static = self.dynamic.only(set())
        example = next((x for x in self.examples if self._fails(x, static) is None), None)
        if example is None:
            return None  # torch.export fails with every dim static too: not a dynamic dim's doing
        for name in sorted(self.dynamic.named()):
            failure = self._fails(example, self.dynamic.only({name}))
            if failure is not None:
                return self._tied(example, name) or self._fixed(name, failure)
        return None

    def _fails(self, example: tuple[torch.Tensor, ...], dynamic: DynamicDims) -> Exception | None:
        try:
            _export(self.model, example, dynamic)
        except Exception as exc:  # torch.export raises many types; any of them is a failure here
            return exc
        return None

    def _dims(self, name: str) -> str:
        return " and ".join(
            f"dim {axis} of input {self.dynamic.input_name(i)!r}" for i, axis in self.dynamic.where(name)
        )

    def _fixed(self, name: str, failure: Exception) -> str:
        found = _SPECIALISED.search(str(failure))
        to = f" to {found.group(1)}" if found else ""
        return (
            f"dynamic_shapes declares {self._dims(name)} dynamic ({name!r}), but the model fixes it: "
            f"torch.export finds that its code specialises that dim{to} (a view or reshape to a constant "
            "size, a Linear or matmul over that dim, or a comparison with a constant size).\n"
            f"Drop {name!r} from dynamic_shapes (the artifact then takes that size only), or make the code "
            "follow the size (x.size(d), view(b, -1, ...) instead of a constant)."
        )

    def _tied(self, example: tuple[torch.Tensor, ...], name: str) -> str | None:
        """The message when declaring ``name`` on the same-sized undeclared dims of the other inputs too
        makes the export pass: the model ties them."""
        declared = self.dynamic.where(name)
        size = example[declared[0][0]].shape[declared[0][1]]
        owners = {i for i, _ in declared}
        partners = [
            (j, axis)
            for j, y in enumerate(example)
            if j not in owners
            for axis in range(1, y.dim())
            if y.shape[axis] == size and axis not in self.dynamic.dims[j]
        ]
        if not partners:
            return None
        alone, whole = [dict(d) for d in self.dynamic.only({name}).dims], [dict(d) for d in self.dynamic.dims]
        for j, axis in partners:
            alone[j][axis] = whole[j][axis] = name
        if self._fails(example, DynamicDims(tuple(alone), self.dynamic.inputs)) is not None:
            return None
        spec = {self.dynamic.input_name(i): d for i, d in enumerate(whole) if d}
        others = " and ".join(f"dim {axis} of input {self.dynamic.input_name(j)!r}" for j, axis in partners)
        return (
            f"dynamic_shapes declares {self._dims(name)} dynamic ({name!r}), but the model ties it to "
            f"{others}, not declared dynamic: a tied dim must be declared on every input that shares it.\n"
            f"Declare it there too: dynamic_shapes={spec!r}."
        )


def user_frame(exc: BaseException) -> str | None:
    """``file:line: code`` of the innermost frame of the caller's own code in ``exc``'s traceback (not
    torch's, not graphopt's, not the standard library's): the line that could not be captured."""
    import graphopt.backends
    import graphopt.passes

    packages = (torch, graphopt.backends, graphopt.passes)
    ours = (Path(__file__).parent, Path(os.__file__).parent, *(Path(p.__file__).parent for p in packages))
    frames: list[traceback.FrameSummary] = []
    chain: BaseException | None = exc
    visited: set[int] = set()
    while chain is not None and id(chain) not in visited:  # torch re-raises: the user's frames are inside
        visited.add(id(chain))
        frames = traceback.extract_tb(chain.__traceback__) + frames
        chain = chain.__cause__ or chain.__context__
    mine = [
        f for f in frames
        if not f.filename.startswith("<") and not any(Path(f.filename).is_relative_to(root) for root in ours)
    ]  # fmt: skip
    if not mine:
        return None
    frame = mine[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}: {(frame.line or '').strip()}"


def _network_hint(model: nn.Module) -> str:
    """Which submodules to optimize instead: a detector's post-processing (box decoding, NMS) is Python
    over values, while its backbone and heads capture."""
    children = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    if not children:
        return "optimize the part of the model that computes tensors and run the rest outside"
    return (
        f"optimize the network part ({', '.join(children)}) as one module that returns its raw outputs, "
        "and run the post-processing (decoding, NMS) on those outputs outside it"
    )


def capture_with_export(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], dynamic: DynamicDims
) -> fx.GraphModule:
    """The lifted module-level graph of ``model``; :class:`CaptureError` when torch.export fails."""
    return lift(export_program(model, example_inputs, dynamic))
