"""Declared dynamic dimensions of a model's inputs, and the shape checks every kind of data shares.

Dimension 0 of every input is the batch (always dynamic). Other dimensions vary between calls only where the
caller declares them in ``dynamic_shapes`` (a sequence length): :class:`DynamicDims`. Data of any kind
(example inputs, calibration batches, train and validation batches) fits the model when its per-sample
shapes equal the example's, a declared dim compared by its name (:func:`per_sample_shapes`), and inputs
sharing a dim's name share its size in each batch (:func:`check_shared_dims`). Backends read the same
declaration to export those dims dynamic (:mod:`graphopt.backends.dynamic`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from graphopt.errors import ConfigError, InvalidInputError

#: The name graphopt gives dimension 0 (the batch, always dynamic) in every artifact.
BATCH = "batch"


@dataclass(frozen=True)
class DynamicDims:
    """Dimensions of the inputs that vary between calls, besides the batch (dim 0, always dynamic).

    ``dims[i]`` maps a dimension of input ``i`` to a name; inputs sharing a name share the size, e.g. a
    sequence length: ``DynamicDims.of({"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}, names)``.
    ``inputs`` are the forward's parameter names, for messages (``input_{i}`` when unknown).
    """

    dims: tuple[Mapping[int, str], ...] = field(default_factory=tuple)
    inputs: tuple[str, ...] = ()

    @staticmethod
    def of(spec: object, input_names: Sequence[str], count: int) -> DynamicDims:
        """From a mapping of input name (or index) to ``{dim: name}``, or a sequence of those per input."""
        if spec is None:
            return DynamicDims(tuple({} for _ in range(count)), tuple(input_names))
        if isinstance(spec, DynamicDims):
            return spec
        if isinstance(spec, Mapping):
            per_input = [{} for _ in range(count)]
            for key, dims in spec.items():
                index = key if isinstance(key, int) else _index_of(key, input_names)
                if not 0 <= index < count:
                    raise ConfigError(f"dynamic_shapes names input {key!r}; the model takes {count} inputs")
                if per_input[index]:
                    raise ConfigError(
                        f"dynamic_shapes gives input {key!r} twice (by name and by index): merge its dims "
                        "into one entry"
                    )
                per_input[index] = dims
            spec = per_input
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or len(spec) != count:
            raise ConfigError(
                "dynamic_shapes must map input names to {dim: name}, e.g. {'input_ids': {1: 'seq'}}"
            )
        names = tuple(input_names)
        for index, dims in enumerate(spec):
            _check_entry(dims, names[index] if index < len(names) else f"input_{index}")
        return DynamicDims(tuple(dict(d) for d in spec), names)

    def named(self) -> set[str]:
        return {name for dims in self.dims for name in dims.values()}

    def input_name(self, index: int) -> str:
        return self.inputs[index] if index < len(self.inputs) else f"input_{index}"

    def where(self, name: str) -> list[tuple[int, int]]:
        """``(input index, dim)`` of every dimension called ``name``."""
        return [(i, axis) for i, dims in enumerate(self.dims) for axis, n in dims.items() if n == name]

    def only(self, names: set[str]) -> DynamicDims:
        """These dims restricted to ``names`` (the others static)."""
        kept = tuple({axis: n for axis, n in dims.items() if n in names} for dims in self.dims)
        return DynamicDims(kept, self.inputs)

    def check_example(self, example_inputs: Sequence[torch.Tensor]) -> None:
        """Refuse, before any capture, a declaration the example inputs cannot honour: a dim the input lacks,
        a dynamic dim of size 1 (torch.export specialises it), a shared name with different sizes."""
        for index, (x, dims) in enumerate(zip(example_inputs, self.dims, strict=False)):
            where = f"input {self.input_name(index)!r}"
            for axis, name in sorted(dims.items()):
                if axis >= x.dim():
                    raise ConfigError(_missing_dim(axis, where, x))
                size = x.shape[axis]
                if size < 2:
                    raise InvalidInputError(
                        f"dim {axis} of {where} is declared dynamic ({name!r}) but has size {size} in "
                        f"example_inputs: torch.export specialises a size-{size} dim to that constant. "
                        "Give an example whose dynamic dims are >= 2 long (e.g. 2 or more tokens)"
                    )
        check_shared_dims(example_inputs, self, "example_inputs")


def check_shared_dims(batch: Sequence[torch.Tensor], dynamic: DynamicDims, what: str) -> None:
    """Inputs sharing a dynamic dim's name share its size within one batch (``input_ids`` and
    ``attention_mask`` of one length): the one check for example inputs, calibration, train and validation
    batches alike. ``what`` names the batch in the message (``"calibration_data item 3"``)."""
    seen: dict[str, tuple[int, str]] = {}
    for index, (x, dims) in enumerate(zip(batch, dynamic.dims, strict=False)):
        for axis, name in sorted(dims.items()):
            if axis >= x.dim():
                continue  # a missing dim is a shape mismatch, refused by the per-sample shape check
            size, where = int(x.shape[axis]), f"dim {axis} of input {dynamic.input_name(index)!r}"
            first = seen.setdefault(name, (size, where))
            if first[0] != size:
                raise InvalidInputError(
                    f"dynamic dim {name!r} is {first[0]} long at {first[1]} but {size} at {where} in {what}: "
                    "dims sharing a name share the size; give inputs of equal length in each batch, or "
                    "different names to dims that vary independently"
                )


def per_sample_shapes(batch: Sequence[torch.Tensor], dynamic: DynamicDims) -> list[tuple[int | str, ...]]:
    """Each input's shape without the batch, a declared dynamic dim shown by its name instead of its size:
    two batches fit one model when these are equal."""
    shapes = []
    for i, x in enumerate(batch):
        dims = dynamic.dims[i] if i < len(dynamic.dims) else {}
        shapes.append(tuple(dims.get(d, size) for d, size in enumerate(x.shape) if d > 0))
    return shapes


def shown(shapes: Sequence[tuple[int | str, ...]]) -> str:
    """Shapes for a message: ``[(6, 16), (seq, 16)]`` (dim names unquoted)."""
    return str([tuple(shape) for shape in shapes]).replace("'", "")


def _missing_dim(axis: int, where: str, x: torch.Tensor) -> str:
    shape = tuple(x.shape)
    has = f"dynamic_shapes names dim {axis} of {where}, which has {x.dim()} dims (example shape {shape})"
    if x.dim() > 1:
        return f"{has}: name a dim from 1 to {x.dim() - 1}, or drop the entry"
    return f"{has} and so no dim besides the batch to declare: drop the entry"


def _check_entry(dims: object, input_name: str) -> None:
    """One input's ``{dim: name}``: dims > 0 (0 is the batch), names usable as ONNX / torch.export
    symbols (identifiers), and not the batch's own name."""
    if not isinstance(dims, Mapping) or not all(
        type(d) is int and d > 0 and isinstance(n, str) for d, n in dims.items()
    ):
        raise ConfigError(
            f"dynamic_shapes entries must map a dimension > 0 to a name (dim 0 is always the "
            f"batch), got {dims!r} for input {input_name!r}"
        )
    for axis, name in dims.items():
        if name == BATCH:
            raise ConfigError(
                f"dynamic_shapes calls dim {axis} of input {input_name!r} {BATCH!r}, the name graphopt gives "
                "dim 0 (always dynamic): a dim of that name would be tied to the batch size. Give it a "
                "name of its own, e.g. 'seq'"
            )
        if not name.isidentifier():
            raise ConfigError(
                f"dynamic_shapes calls dim {axis} of input {input_name!r} {name!r}: a dim name must be an "
                "identifier (letters, digits, underscores; not empty, no spaces), e.g. 'seq' or 'seq_len'"
            )


def _index_of(name: object, input_names: Sequence[str]) -> int:
    if name not in input_names:
        raise ConfigError(
            f"dynamic_shapes names input {name!r}; the forward's inputs are {list(input_names)}"
        )
    return list(input_names).index(name)


#: The ``x.float()``-style call that converts a tensor to each dtype, for messages.
_CONVERSION = {
    torch.float32: "x.float()",
    torch.float64: "x.double()",
    torch.float16: "x.half()",
    torch.bfloat16: "x.bfloat16()",
    torch.int64: "x.long()",
    torch.int32: "x.int()",
    torch.bool: "x.bool()",
}


def check_batch_tensors(
    batch: Sequence[torch.Tensor], example: Sequence[torch.Tensor] | None, what: str
) -> None:
    """The checks every kind of data shares before any shape is compared: each input has a batch dim
    (not 0-d) holding at least one sample, finite values, and the example's dtype where it is floating (a
    float64 batch would fail inside a pass after capture), or the example's kind (integer, bool, complex)
    otherwise. ``what`` names the batch (``"train_data item 3"``)."""
    for index, x in enumerate(batch):
        where = f"input {index} of {what}"
        if x.dim() == 0:
            raise InvalidInputError(
                f"{where} is a 0-d tensor (a scalar); dim 0 of every input is the batch: give a batch, "
                "e.g. x.unsqueeze(0) for one sample"
            )
        if x.shape[0] == 0:
            raise InvalidInputError(
                f"{where} has 0 samples (shape {tuple(x.shape)}): give batches of at least one sample, or "
                "leave the empty ones out"
            )
        if example is not None and index < len(example):
            _check_dtype(x, example[index], where)
        if (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
            raise InvalidInputError(f"{where} contains NaN or inf: give finite values")


def _check_dtype(x: torch.Tensor, example: torch.Tensor, where: str) -> None:
    """Floating data must have the example's exact dtype (the captured graph's weights and constants have
    it); other data the example's kind, so int32 token ids may feed an int64 example."""
    same = x.dtype == example.dtype if example.is_floating_point() else _kind(x) == _kind(example)
    if not same:
        convert = _CONVERSION.get(example.dtype, f"x.to({example.dtype})")
        raise InvalidInputError(
            f"{where} has dtype {x.dtype} but example_inputs has {example.dtype}: the model is captured "
            f"for that dtype; convert the data ({convert})"
        )


def _kind(x: torch.Tensor) -> str:
    if x.dtype == torch.bool:
        return "bool"
    return "floating" if x.is_floating_point() else "complex" if x.is_complex() else "integer"


def is_input_tuple(item: object, example: Sequence[torch.Tensor] | None, dynamic: DynamicDims) -> bool:
    """Whether ``item`` is one batch of a multi-input model's inputs: as many tensors as ``example`` (two or
    more), each of the same rank, kind (float or not) and per-sample size, a dim ``dynamic`` declares free.
    Tells ``(input_ids, attention_mask)`` from an ``(inputs, labels)`` pair."""
    if example is None or len(example) < 2 or not isinstance(item, (tuple, list)):
        return False
    if len(item) != len(example) or not all(isinstance(x, torch.Tensor) for x in item):
        return False
    for i, (x, e) in enumerate(zip(item, example, strict=True)):
        free = dynamic.dims[i] if i < len(dynamic.dims) else {}
        if x.dim() != e.dim() or x.dtype.is_floating_point != e.dtype.is_floating_point:
            return False
        if any(
            a != b for d, (a, b) in enumerate(zip(x.shape, e.shape, strict=True)) if d > 0 and d not in free
        ):
            return False
    return True
