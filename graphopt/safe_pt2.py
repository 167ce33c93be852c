"""Read a ``.pt2`` archive without running anything it contains.

``torch.export.load`` is not safe on a file from someone else. It unpickles with ``weights_only=False``
(weights and constants whose config says ``use_pickle``, legacy weight files, and sample inputs when the
safe unpickler refuses them), ``sympy.sympify`` evaluates the symbolic-shape strings of ``models/*.json``
(``eval`` underneath), ``.module()`` compiles the archive's ``guards_code`` into Python, and torch.fx
generates Python source from node names and targets it does not sanitise. Any of these runs code written
by whoever wrote the archive.

So graphopt reads the zip itself and checks everything before torch sees any of it:

* members: an allow-list of names (one model, tensor payloads, JSON configs, our header); anything else
  (AOTInductor shared objects, pickled legacy weights, custom or opaque objects) refuses the archive;
* payload configs: no entry may say ``use_pickle``;
* sample inputs: loaded with ``torch.load(weights_only=True)`` (PyTorch's allow-listed unpickler), never
  with a fallback;
* the program: node metadata (free text: stack traces, module paths) is dropped, ``guards_code`` may only
  compare input sizes (``L['x'].size()[0] == L['y'].size()[0]``), every op target must be in
  :data:`ALLOWED_TARGET_PREFIXES` / :data:`ALLOWED_OPERATOR_TARGETS`, every other string must be a
  dotted identifier, and every symbolic expression must tokenise into symbols, integers, operators and
  the few sympy names in :data:`ALLOWED_EXPR_NAMES` (no attribute access, no strings beyond a quoted
  symbol name).

Only then is the checked JSON handed to torch's deserializer, from bytes already in memory (the file is read
once, so it cannot change between the check and the load).
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from graphopt.errors import SerializationError

MODEL = "model"
HEADER_MEMBER = "extra/graphopt.json"
_SAMPLE_INPUTS = f"data/sample_inputs/{MODEL}.pt"
_PROGRAM = f"models/{MODEL}.json"
_WEIGHTS_CONFIG = f"data/weights/{MODEL}_weights_config.json"
_CONSTANTS_CONFIG = f"data/constants/{MODEL}_constants_config.json"

#: Every member a graphopt archive may hold, relative to the archive's root folder.
ALLOWED_MEMBERS = (
    re.compile(r"archive_format"),
    re.compile(r"archive_version"),
    re.compile(r"byteorder"),
    re.compile(r"\.data/version"),
    re.compile(r"\.data/serialization_id"),
    re.compile(re.escape(_PROGRAM)),
    re.compile(re.escape(_WEIGHTS_CONFIG)),
    re.compile(r"data/weights/weight_\d+"),
    re.compile(re.escape(_CONSTANTS_CONFIG)),
    re.compile(r"data/constants/tensor_\d+"),
    re.compile(re.escape(_SAMPLE_INPUTS)),
    re.compile(re.escape(HEADER_MEMBER)),
)

#: Op targets a graph may call: ATen and the quantize/dequantize and control-flow operators export emits.
ALLOWED_TARGET_PREFIXES = (
    "torch.ops.aten.",
    "torch.ops.graphopt.",  # graphopt's own ops (dynamic int8 Linear), registered when graphopt is imported
    "torch.ops.quantized_decomposed.",
    "torch.ops.higher_order.cond",
)
#: ATen ops that touch files or processes: refused even though they are ATen.
REFUSED_ATEN_OPS = frozenset({"from_file", "_save", "save"})
#: ATen ops whose names are dunders (the bitwise operators); any other dunder is an attribute walk.
ATEN_DUNDER_OPS = frozenset(
    f"__{name}__"
    for name in ("and", "or", "xor", "lshift", "rshift", "iand", "ior", "ixor", "ilshift", "irshift")
)
#: Python-level callables a graph may name (symbolic shape arithmetic and tuple indexing).
ALLOWED_OPERATOR_TARGETS = frozenset(
    f"_operator.{name}"
    for name in (
        "getitem",
        "add",
        "sub",
        "mul",
        "floordiv",
        "truediv",
        "mod",
        "neg",
        "pow",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "not_",
    )
) | frozenset(f"math.{name}" for name in ("ceil", "floor", "sqrt", "trunc"))

#: Names a symbolic-shape expression may use besides symbols (``s12``, ``u3``): sympy constructors and the
#: integer functions torch's symbolic shapes print.
ALLOWED_EXPR_NAMES = frozenset(
    {
        "Symbol",
        "Integer",
        "Rational",
        "positive",
        "integer",
        "True",
        "False",
        "Add",
        "Mul",
        "Pow",
        "Max",
        "Min",
        "Mod",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "And",
        "Or",
        "Not",
        "oo",
        "int_oo",
        "FloorDiv",
        "CeilDiv",
        "CleanDiv",
        "PythonMod",
        "IntTrueDiv",
        "FloatTrueDiv",
        "Abs",
        "Eq",
        "Ne",
        "floor",
        "ceiling",
        "TruncToInt",
        "ToFloat",
    }
)
_EXPR_TOKEN = re.compile(r"\s*(?:'(?P<quoted>[a-z]+\d+)'|(?P<name>[A-Za-z_]\w*)|\d+|[-+*/%(),<>=!])")
_SYMBOL = re.compile(r"[a-z]+\d+")
_GUARD_TOKEN = re.compile(
    r"\s*(?:L\['[A-Za-z_]\w*'\]|\.size\(\)|\.stride\(\)|\[\d+\]|\d+|==|!=|<=|>=|<|>|\+|-|\*|//|%|\(|\)"
    r"|and\b|or\b|not\b)"
)
_DOTTED_NAME = re.compile(r"[A-Za-z0-9_.]*")
#: Keys whose strings are checked by their own rule rather than as dotted names.
_FREE_KEYS = frozenset({"target", "expr_str", "in_spec", "out_spec", "torch_version", "type"})


@dataclass(frozen=True)
class CheckedArchive:
    """What :func:`read_checked` vouches for: the program JSON, the archive bytes and our header."""

    data: bytes
    root: str
    program: dict[str, Any]
    header: str


def read_checked(raw: bytes, name: str) -> CheckedArchive:
    """Check an archive's bytes (see the module docstring); raise :class:`SerializationError` on anything."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile as exc:
        raise SerializationError(f"{name} is not a graphopt .pt2 archive (not a zip file: {exc})") from exc
    with archive:
        root, members = _split_root(archive.namelist(), name)
        for member in members:
            if not any(rule.fullmatch(member) for rule in ALLOWED_MEMBERS):
                raise SerializationError(
                    f"{name} holds {member!r}, which graphopt does not load (only tensors and JSON; pickled "
                    "objects and compiled code are refused): re-save the model with graphopt.save"
                )
        for required in (_PROGRAM, _WEIGHTS_CONFIG, HEADER_MEMBER):
            if required not in members:
                raise SerializationError(f"{name} lacks {required!r}: it was not written by graphopt.save")
        for config in (_WEIGHTS_CONFIG, _CONSTANTS_CONFIG):
            if config in members:
                _check_payload_config(_read_json(archive, root, config, name), config, name)
        program = _read_json(archive, root, _PROGRAM, name)
        header = archive.read(f"{root}/{HEADER_MEMBER}").decode("utf-8", errors="replace")
        if _SAMPLE_INPUTS in members:
            _check_sample_inputs(archive.read(f"{root}/{_SAMPLE_INPUTS}"), name)
    return CheckedArchive(raw, root, _checked_program(program, name), header)


def load_program(checked: CheckedArchive) -> torch.export.ExportedProgram:
    """Deserialize a checked archive with torch's own readers (no pickled member is left for them)."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass
    from torch.export.pt2_archive._package import PT2ArchiveReader, _load_constants, _load_state_dict

    with PT2ArchiveReader(io.BytesIO(checked.data)) as reader:
        state_dict = _load_state_dict(reader, MODEL)
        constants = _load_constants(reader, MODEL) if _has(reader, _CONSTANTS_CONFIG) else {}
        sample = reader.read_bytes(_SAMPLE_INPUTS) if _has(reader, _SAMPLE_INPUTS) else b""
    sample_inputs = torch.load(io.BytesIO(sample), weights_only=True) if sample else None
    serialized = _dict_to_dataclass(schema.ExportedProgram, checked.program)
    return ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, sample_inputs)


def _has(reader: Any, member: str) -> bool:
    return member in reader.get_file_names()


def _split_root(names: list[str], name: str) -> tuple[str, set[str]]:
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise SerializationError(f"{name} is not a graphopt .pt2 archive (its members share no root folder)")
    root = roots.pop()
    return root, {n.split("/", 1)[1] for n in names}


def _read_json(archive: zipfile.ZipFile, root: str, member: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(archive.read(f"{root}/{member}"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"{name}: {member} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise SerializationError(f"{name}: {member} is not a JSON object")
    return value


def _check_payload_config(config: dict[str, Any], member: str, name: str) -> None:
    entries = config.get("config")
    if not isinstance(entries, dict):
        raise SerializationError(f"{name}: {member} has no 'config' object")
    for fqn, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            raise SerializationError(
                f"{name}: {member} stores {fqn!r} as a pickle; graphopt never unpickles archive members "
                "(that could run code). Re-save the model with graphopt.save"
            )
        if not re.fullmatch(r"(weight|tensor)_\d+", str(entry.get("path_name", ""))):
            raise SerializationError(f"{name}: {member} names an unexpected payload for {fqn!r}")


def _check_sample_inputs(data: bytes, name: str) -> None:
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # the safe unpickler refuses anything but tensors and containers
        raise SerializationError(
            f"{name}: its sample inputs are not plain tensors (the safe unpickler refused them: "
            f"{type(exc).__name__}); graphopt does not unpickle anything else"
        ) from exc


def _checked_program(program: dict[str, Any], name: str) -> dict[str, Any]:
    guards = program.get("guards_code") or []
    if not isinstance(guards, list) or not all(isinstance(g, str) and _is_shape_guard(g) for g in guards):
        raise SerializationError(
            f"{name}: its program carries guards_code that is not a plain comparison of input sizes (torch "
            "compiles it into Python); graphopt does not load archives that hold code"
        )
    program = _without_node_metadata(program)
    for key, value in _strings(program):
        problem = _string_problem(key, value)
        if problem:
            raise SerializationError(
                f"{name}: refused to load the program: {problem} (graphopt loads only ATen graphs, tensors "
                "and JSON, nothing that could run code); re-save the model with graphopt.save"
            )
    return program


def _without_node_metadata(value: Any) -> Any:
    """A copy with every node's ``metadata`` (free text: stack traces, module paths) emptied."""
    if isinstance(value, dict):
        is_node = {"target", "inputs", "outputs"} <= value.keys()
        return {
            key: ({} if is_node and key == "metadata" else _without_node_metadata(item))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_without_node_metadata(item) for item in value]
    return value


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, item in value.items():
            if not _DOTTED_NAME.fullmatch(str(k)):
                yield "key", str(k)
            yield from _strings(item, str(k))
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, key)
    elif isinstance(value, str):
        yield key, value


def _string_problem(key: str, value: str) -> str | None:
    if key == "target":
        return None if _allowed_target(value) else f"op target {value!r} is not an allowed operator"
    if key == "expr_str":
        return _expr_problem(value)
    if key == "guards_code":
        return None if _is_shape_guard(value) else f"guard {value!r} is not a comparison of input sizes"
    if key in {"in_spec", "out_spec"}:
        return None  # JSON tree specs: torch resolves their types from a registry, never by import
    if key in _FREE_KEYS:
        return None if re.fullmatch(r"[\w.+\-]*", value) else f"{key} {value!r} is malformed"
    if not _DOTTED_NAME.fullmatch(value):  # no spaces, quotes or brackets: nothing codegen could run
        return f"{key} {value!r} is not a plain name"
    return None


def _allowed_target(target: str) -> bool:
    if target in ALLOWED_OPERATOR_TARGETS:
        return True
    if not target.startswith(ALLOWED_TARGET_PREFIXES) or not _DOTTED_NAME.fullmatch(target):
        return False
    parts = target.split(".")
    if target == "torch.ops.higher_order.cond":
        return True
    if len(parts) != 5:  # torch.ops.<namespace>.<op>.<overload>: nothing deeper, no attribute walk
        return False
    op, overload = parts[3], parts[4]
    dunder_ok = op in ATEN_DUNDER_OPS or "__" not in op
    return op not in REFUSED_ATEN_OPS and dunder_ok and "__" not in overload


def _is_shape_guard(guard: str) -> bool:
    """Whether ``guard`` is arithmetic and comparisons of input sizes (``L['x'].size()[0] == 2``): the only
    guards torch.export writes for graphopt's models; anything else could be any Python."""
    position = 0
    while position < len(guard):
        token = _GUARD_TOKEN.match(guard, position)
        if token is None or token.end() == position:
            return False
        position = token.end()
    return True


def _expr_problem(expr: str) -> str | None:
    position = 0
    while position < len(expr):
        token = _EXPR_TOKEN.match(expr, position)
        if token is None or token.end() == position:
            return f"symbolic expression {expr!r} has a character outside the shape grammar"
        word = token.group("name")
        if word is not None and word not in ALLOWED_EXPR_NAMES and not _SYMBOL.fullmatch(word):
            return f"symbolic expression {expr!r} names {word!r}, which is not a shape function"
        position = token.end()
    return None
