"""Read a ``.pt2`` archive without running anything it contains.

``torch.export.load`` is not safe on a file from someone else. It unpickles with ``weights_only=False``
(weights and constants whose config says ``use_pickle``, legacy weight files, and sample inputs when the
safe unpickler refuses them), ``sympy.sympify`` evaluates the symbolic-shape strings of ``models/*.json``
(``eval`` underneath), ``.module()`` compiles the archive's ``guards_code`` into Python, and torch.fx
generates Python source from node names and targets it does not sanitise. Any of these runs code written
by whoever wrote the archive.

So graphopt reads the zip itself and checks everything before torch sees any of it:

* the zip: parsed once by :mod:`graphopt.artifacts.safe_zip` (duplicate or traversing names, headers
  that disagree, overlapping members, bad CRCs, other compression or encryption, and more inflation than
  the file's size allows are refused); torch then reads a canonical copy rebuilt from exactly the members
  checked, so no reader can see a member the check did not;
* JSON: nesting deeper than :data:`MAX_JSON_DEPTH` is refused before it is parsed;
* members: an allow-list of names (one model, tensor payloads, JSON configs, our header); anything else
  (AOTInductor shared objects, pickled legacy weights, custom or opaque objects) refuses the archive;
* payload configs: no entry may say ``use_pickle``, and each tensor must fit in its payload (torch would
  otherwise allocate what an empty payload's metadata declares);
* sample inputs: loaded with ``torch.load(weights_only=True)`` (PyTorch's allow-listed unpickler), never
  with a fallback;
* the program: node metadata (free text: stack traces, module paths) is dropped, ``guards_code`` may only
  compare input sizes (``L['x'].size()[0] == L['y'].size()[0]``), every op target must be in
  :data:`ALLOWED_TARGET_PREFIXES` / :data:`ALLOWED_OPERATOR_TARGETS`, every other string must be a
  dotted identifier, and every symbolic expression must parse in a small shape grammar (symbols, integers
  of at most :data:`MAX_EXPR_INT_DIGITS` digits, arithmetic and comparisons, calls of the sympy names in
  :data:`ALLOWED_EXPR_NAMES`; a power's exponent is a small integer literal, never a tower) whose values
  are bounded before sympy evaluates anything: torch hands the string to ``sympy.sympify``.

Only then is the checked JSON handed to torch's deserializer, from bytes already in memory (the file is read
once, so it cannot change between the check and the load). Every refusal is a :class:`SerializationError`.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from graphopt.artifacts.safe_zip import ZipLimits, ZipRefused, read_members, write_stored
from graphopt.errors import SerializationError, first_line

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
        # what sympy's srepr prints for the comparisons above
        "StrictLessThan",
        "LessThan",
        "StrictGreaterThan",
        "GreaterThan",
        "Equality",
        "Unequality",
    }
)

#: Names in :data:`ALLOWED_EXPR_NAMES` that are values, not calls.
_EXPR_CONSTANTS = frozenset({"True", "False", "oo", "int_oo"})
#: Keyword arguments ``Symbol(...)`` may take (sympy assumptions), each ``True`` or ``False``.
_SYMBOL_ASSUMPTIONS = frozenset({"positive", "integer", "nonnegative", "real", "finite"})
#: Sympy names whose value's size is the sum of their arguments' (the others: the largest, plus one).
_MULTIPLYING_CALLS = frozenset({"Mul", "Rational"})
_EXPR_CALLS = ALLOWED_EXPR_NAMES - _EXPR_CONSTANTS - _SYMBOL_ASSUMPTIONS
_COMPARISONS = frozenset({"<", "<=", ">", ">=", "==", "!="})
#: Bounds on a symbolic expression, so ``sympy.sympify`` finishes at once whatever the archive says.
MAX_EXPR_CHARS = 4096
MAX_EXPR_DEPTH = 32
MAX_EXPR_INT_DIGITS = 40
MAX_EXPR_EXPONENT = 64
#: The most decimal digits any value inside an expression may reach (an upper bound computed while parsing).
MAX_EXPR_VALUE_DIGITS = 1000
MAX_JSON_DEPTH = 100
#: Arguments of one ``Max`` / ``Min`` call: sympy's cost grows with their square (199 arguments took 28 s
#: to load); torch prints them with two or a few.
MAX_EXPR_CALL_ARGS = 8
#: Characters of all symbolic expressions of one program together: each is cheap, thousands add up.
MAX_PROGRAM_EXPR_CHARS = 200_000
#: Tree-spec node types a program's ``in_spec`` / ``out_spec`` may name: torch resolves others through
#: registries, and its dict context reader imports modules named in ``{"__enum__": ...}`` objects.
ALLOWED_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict"})
_EXPR_TOKEN = re.compile(
    r"\s*(?:(?P<int>\d+)|(?P<name>[A-Za-z_]\w*)|(?P<quoted>'[^']*')|(?P<op>\*\*|//|<=|>=|==|!=|[-+*/%(),<>=]))"
)
_SYMBOL = re.compile(r"[a-z]+\d+")
_GUARD_TOKEN = re.compile(
    r"\s*(?:L\['[A-Za-z_]\w*'\]|\.size\(\)|\.stride\(\)|\[\d+\]|\d+|==|!=|<=|>=|<|>|\+|-|\*|//|%|\(|\)"
    r"|and\b|or\b|not\b)"
)
MAX_GUARD_CHARS = 4096
_DOTTED_NAME = re.compile(r"[A-Za-z0-9_.]*")
#: Keys whose strings are checked by their own rule rather than as dotted names.
_FREE_KEYS = frozenset({"target", "expr_str", "in_spec", "out_spec", "torch_version", "type"})
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_PAYLOAD_NAME = re.compile(r"(weight|tensor)_\d+")
_RESAVE = "re-save the model with OptimizeResult.save"
#: Zip limits for an archive and for the torch.save zip of its sample inputs inside it.
ARCHIVE_LIMITS = ZipLimits()


@dataclass(frozen=True)
class CheckedArchive:
    """What :func:`read_checked` vouches for: a canonical archive holding only the checked members (all
    torch may read), the checked program JSON, our header and the sample inputs (already loaded safely)."""

    data: bytes
    root: str
    program: dict[str, Any]
    header: str
    sample_inputs: Any


def read_checked(raw: bytes, name: str) -> CheckedArchive:
    """Check an archive's bytes (see the module docstring); raise :class:`SerializationError` on anything."""
    members = _verified_zip(raw, f"{name} is not a graphopt .pt2 archive")
    root, files = _split_root(members, name)
    for member in files:
        if not any(rule.fullmatch(member) for rule in ALLOWED_MEMBERS):
            raise SerializationError(
                f"{name} holds {member!r}, which graphopt does not load (only tensors and JSON; pickled "
                f"objects and compiled code are refused): {_RESAVE}"
            )
    for required in (_PROGRAM, _WEIGHTS_CONFIG, HEADER_MEMBER):
        if required not in files:
            raise SerializationError(f"{name} lacks {required!r}: it was not written by OptimizeResult.save")
    for config in (_WEIGHTS_CONFIG, _CONSTANTS_CONFIG):
        if config in files:
            _check_payload_config(parse_json(files[config], config, name), config, files, name)
    program = parse_json(files[_PROGRAM], _PROGRAM, name)
    header = files[HEADER_MEMBER].decode("utf-8", errors="replace")
    sample_inputs = _checked_sample_inputs(files[_SAMPLE_INPUTS], name) if _SAMPLE_INPUTS in files else None
    canonical = write_stored({f"{root}/{member}": data for member, data in files.items()})
    return CheckedArchive(canonical, root, _checked_program(program, name), header, sample_inputs)


def load_program(checked: CheckedArchive) -> torch.export.ExportedProgram:
    """Deserialize a checked archive with torch's own readers, from its canonical copy (no pickled member
    is left for them, and no member the check did not see)."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass
    from torch.export.pt2_archive._package import PT2ArchiveReader, _load_constants, _load_state_dict

    with PT2ArchiveReader(io.BytesIO(checked.data)) as reader:
        state_dict = _load_state_dict(reader, MODEL)
        constants = _load_constants(reader, MODEL) if _has(reader, _CONSTANTS_CONFIG) else {}
    serialized = _dict_to_dataclass(schema.ExportedProgram, checked.program)
    return ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, checked.sample_inputs)


def parse_json(data: bytes, member: str, name: str) -> Any:
    """``data`` parsed as JSON, refusing nesting deeper than :data:`MAX_JSON_DEPTH` before parsing (the
    parser and every walk over the result recurse once per level)."""
    try:
        text = data.decode("utf-8")
        if _json_depth(text) > MAX_JSON_DEPTH:
            raise SerializationError(
                f"{name}: {member} nests deeper than {MAX_JSON_DEPTH} levels (graphopt never writes that); "
                f"{_RESAVE}"
            )
        return json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: also over-long integers
        raise SerializationError(
            f"{name}: {member} is not valid JSON ({first_line(exc)}); {_RESAVE}"
        ) from exc


def _json_depth(text: str) -> int:
    """The deepest nesting of brackets outside strings: the most levels ``json.loads`` could recurse."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _verified_zip(raw: bytes, what: str, limits: ZipLimits = ARCHIVE_LIMITS) -> dict[str, bytes]:
    try:
        return read_members(raw, limits)
    except ZipRefused as exc:
        raise SerializationError(f"{what} (not a zip file graphopt accepts: {exc}); {_RESAVE}") from exc


def _has(reader: Any, member: str) -> bool:
    return member in reader.get_file_names()


def _split_root(members: dict[str, bytes], name: str) -> tuple[str, dict[str, bytes]]:
    roots = {n.split("/", 1)[0] for n in members}
    if len(roots) != 1 or any("/" not in n for n in members):
        raise SerializationError(f"{name} is not a graphopt .pt2 archive (its members share no root folder)")
    root = roots.pop()
    return root, {n.split("/", 1)[1]: data for n, data in members.items()}


def _check_payload_config(config: Any, member: str, files: dict[str, bytes], name: str) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise SerializationError(f"{name}: {member} has no 'config' object; {_RESAVE}")
    folder = member.rsplit("/", 1)[0]
    for fqn, entry in entries.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            raise SerializationError(
                f"{name}: {member} stores {fqn!r} as a pickle; graphopt never unpickles archive members "
                f"(that could run code). {_RESAVE}"
            )
        path_name = str(entry.get("path_name", ""))
        if not _PAYLOAD_NAME.fullmatch(path_name) or f"{folder}/{path_name}" not in files:
            raise SerializationError(f"{name}: {member} names an unexpected or missing payload for {fqn!r}")
        problem = _tensor_meta_problem(entry.get("tensor_meta"), len(files[f"{folder}/{path_name}"]))
        if problem:
            raise SerializationError(f"{name}: {member} describes {fqn!r} wrongly: {problem}; {_RESAVE}")


def _tensor_meta_problem(meta: Any, payload_bytes: int) -> str | None:
    """Why the tensor ``meta`` describes does not fit in its payload (torch would allocate what it says)."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    if not isinstance(meta, dict):
        return "no tensor metadata"
    try:
        dtype = _SERIALIZE_TO_TORCH_DTYPE[schema.ScalarType(meta.get("dtype"))]
    except (KeyError, ValueError):
        return f"unknown dtype {meta.get('dtype')!r}"
    sizes, strides = _plain_ints(meta.get("sizes")), _plain_ints(meta.get("strides"))
    offset = _plain_ints([meta.get("storage_offset")])
    if sizes is None or strides is None or offset is None or len(sizes) != len(strides):
        return "sizes, strides or offset are not plain non-negative integers"
    itemsize = dtype.itemsize
    numel = int(np.prod(sizes, dtype=object)) if sizes else 1
    needed = (
        0
        if numel == 0
        else (offset[0] + sum((s - 1) * t for s, t in zip(sizes, strides, strict=True)) + 1) * itemsize
    )
    if payload_bytes % itemsize or payload_bytes < needed or (payload_bytes == 0 and numel):
        return f"it needs {needed} bytes of {dtype} storage and its payload holds {payload_bytes}"
    return None


def _plain_ints(values: Any) -> list[int] | None:
    if not isinstance(values, list):
        return None
    ints = [v.get("as_int") if isinstance(v, dict) and v.keys() == {"as_int"} else None for v in values]
    if not all(type(i) is int and i >= 0 for i in ints):
        return None
    return ints  # type: ignore[return-value]


def _checked_sample_inputs(data: bytes, name: str) -> Any:
    """The sample inputs, loaded with PyTorch's allow-listed unpickler from a canonical copy of their own
    zip (a torch.save file is a zip too: it gets the same strict reading as the archive)."""
    members = _verified_zip(data, f"{name}: its sample inputs are not a torch.save file")
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(write_stored(members)), weights_only=True)
    except Exception as exc:  # the safe unpickler refuses anything but tensors and containers
        raise SerializationError(
            f"{name}: its sample inputs are not plain tensors (the safe unpickler refused them: "
            f"{type(exc).__name__}); graphopt does not unpickle anything else"
        ) from exc


def _checked_program(program: Any, name: str) -> dict[str, Any]:
    if not isinstance(program, dict):
        raise SerializationError(f"{name}: {_PROGRAM} is not a JSON object; {_RESAVE}")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list) or not all(isinstance(g, str) and _is_shape_guard(g) for g in guards):
        raise SerializationError(
            f"{name}: its program carries guards_code that is not a plain comparison of input sizes (torch "
            "compiles it into Python); graphopt does not load archives that hold code"
        )
    program = _without_node_metadata(program)
    expression_chars = 0
    for key, value in _strings(program):
        expression_chars += len(value) if key == "expr_str" else 0
        if expression_chars > MAX_PROGRAM_EXPR_CHARS:
            raise SerializationError(
                f"{name}: its program holds over {MAX_PROGRAM_EXPR_CHARS} characters of symbolic shape "
                f"expressions (graphopt's models hold a few hundred); {_RESAVE}"
            )
        problem = _string_problem(key, value)
        if problem:
            raise SerializationError(
                f"{name}: refused to load the program: {problem} (graphopt loads only ATen graphs, tensors "
                f"and JSON, nothing that could run code); {_RESAVE}"
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
        return _treespec_problem(value)
    if key == "as_operator":  # a callable torch resolves by walking attributes: the op allow-list applies
        return None if _allowed_target(value) else f"operator {value!r} is not an allowed operator"
    if key in _FREE_KEYS:
        return None if re.fullmatch(r"[\w.+\-]*", value) else f"{key} {value!r} is malformed"
    if not _DOTTED_NAME.fullmatch(value):  # no spaces, quotes or brackets: nothing codegen could run
        return f"{key} {value!r} is not a plain name"
    return None


def _treespec_problem(text: str) -> str | None:
    """Why a serialized pytree spec is not one graphopt writes (nested tuples, lists and dicts of tensors,
    dict keys plain strings or integers), or None. torch's reader imports modules named in its dict
    contexts (``{"__enum__": true, "fqn": "module:attr"}``) and resolves other node types by name."""
    try:
        version, root = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return f"tree spec {text[:80]!r} is not [version, node] JSON"
    if type(version) is not int:
        return f"tree spec {text[:80]!r} has no integer version"
    pending = [root]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict) or node.keys() != {"type", "context", "children_spec"}:
            return "a tree spec node is not {type, context, children_spec}"
        if node["type"] not in ALLOWED_TREESPEC_TYPES:
            return f"tree spec type {str(node['type'])[:80]!r} is not a tuple, list or dict"
        if not _plain_context(node["context"]):
            return f"tree spec context {str(node['context'])[:80]!r} is not a list of plain keys"
        if not isinstance(node["children_spec"], list):
            return "a tree spec node's children are not a list"
        pending.extend(node["children_spec"])
    return None


def _plain_context(context: Any) -> bool:
    """A node's context: none, or (a dict's) JSON list of string or integer keys."""
    if context is None or context == "null":
        return True
    try:
        keys = json.loads(context) if isinstance(context, str) else None
    except (ValueError, RecursionError):
        return False
    return isinstance(keys, list) and all(type(k) in (str, int) for k in keys)


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
    guards torch.export writes for graphopt's models; anything else could be any Python. No ``**``: a
    power tower would hang the first call that checks the guard."""
    if len(guard) > MAX_GUARD_CHARS or "**" in re.sub(r"\s+", "", guard):
        return False
    position = 0
    while position < len(guard):
        token = _GUARD_TOKEN.match(guard, position)
        if token is None or token.end() == position:
            return False
        position = token.end()
    return True


def _expr_problem(expr: str) -> str | None:
    """Why ``expr`` is not a symbolic shape expression graphopt lets sympy evaluate, or None."""
    if len(expr) > MAX_EXPR_CHARS:
        return f"a symbolic expression of {len(expr)} characters (at most {MAX_EXPR_CHARS})"
    try:
        _ShapeExpr(expr).parse()
    except _ExprRefused as exc:
        return f"symbolic expression {expr[:120]!r} is outside the shape grammar: {exc}"
    return None


class _ExprRefused(Exception):
    """An expression outside the grammar; the message says where."""


class _ShapeExpr:
    """A recursive-descent parser for the shape grammar; it evaluates nothing. Each ``parse_*`` method
    returns an upper bound on the number of decimal digits its value can have once sympy evaluates it, so
    a product of huge literals or a nest of powers is refused before sympy starts.

        expr       := arith [comparison arith]
        arith      := term (('+' | '-') term)*
        term       := unary (('*' | '/' | '//' | '%') unary)*
        unary      := ('-' | '+') unary | power
        power      := atom ['**' small_int]
        atom       := INT | SYMBOL | constant | call | '(' expr ')'
        call       := NAME '(' [expr (',' expr)*] ')'          for NAME in ALLOWED_EXPR_NAMES
                    | 'Symbol' '(' QUOTED_SYMBOL (',' ASSUMPTION '=' BOOL)* ')'
                    | 'Integer' '(' small_int ')' | 'Rational' '(' small_int ',' small_int ')'
                    | 'Pow' '(' expr ',' (small_int | 'Integer' '(' small_int ')') ')'
    """

    def __init__(self, text: str):
        self.tokens = _expr_tokens(text)
        self.at = 0
        self.depth = 0

    def parse(self) -> int:
        digits = self.parse_expr()
        if self.at != len(self.tokens):
            raise _ExprRefused(f"unexpected {self.tokens[self.at][1]!r}")
        return digits

    def peek(self) -> str:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else ""

    def take(self, kind: str | None = None, text: str | None = None) -> str:
        if self.at >= len(self.tokens):
            raise _ExprRefused("it ends too early")
        token_kind, token = self.tokens[self.at]
        if (kind is not None and token_kind != kind) or (text is not None and token != text):
            raise _ExprRefused(f"unexpected {token!r}")
        self.at += 1
        return token

    def nested(self, parse: Any) -> int:
        """``parse()`` one level deeper; refused past :data:`MAX_EXPR_DEPTH` (sympy recurses per level)."""
        self.depth += 1
        if self.depth > MAX_EXPR_DEPTH:
            raise _ExprRefused(f"it nests deeper than {MAX_EXPR_DEPTH} levels")
        try:
            return _bounded(parse())
        finally:
            self.depth -= 1

    def parse_expr(self) -> int:
        digits = self.parse_arith()
        if self.peek() in _COMPARISONS:
            self.take()
            digits = max(digits, self.parse_arith())
        return digits

    def parse_arith(self) -> int:
        digits = self.parse_term()
        while self.peek() in ("+", "-"):
            self.take()
            digits = _bounded(max(digits, self.parse_term()) + 1)
        return digits

    def parse_term(self) -> int:
        digits = self.parse_unary()
        while self.peek() in ("*", "/", "//", "%"):
            operator = self.take()
            right = self.parse_unary()
            digits = _bounded(digits + right if operator in ("*", "/") else max(digits, right))
        return digits

    def parse_unary(self) -> int:
        if self.peek() in ("-", "+"):
            self.take()
            return self.nested(self.parse_unary)
        base = self.parse_atom()
        if self.peek() == "**":
            self.take()
            return _bounded(base * max(1, abs(self.parse_exponent())))
        return base

    def parse_atom(self) -> int:
        kind, token = self.tokens[self.at] if self.at < len(self.tokens) else ("", "")
        if kind == "int":
            return len(self.take())
        if token == "(":
            self.take()
            digits = self.nested(self.parse_expr)
            self.take(text=")")
            return digits
        if kind == "name" and self.at + 1 < len(self.tokens) and self.tokens[self.at + 1][1] == "(":
            return self.nested(self.parse_call)
        if kind == "name" and (token in _EXPR_CONSTANTS or _SYMBOL.fullmatch(token)):
            self.take()
            return 1
        raise _ExprRefused(
            f"{token!r} is not a symbol, an integer or a shape function" if token else "it ends"
        )

    def parse_call(self) -> int:
        name = self.take("name")
        if name not in _EXPR_CALLS:
            raise _ExprRefused(f"it calls {name!r}, which is not a shape function")
        self.take(text="(")
        if name == "Symbol":
            digits = self.parse_symbol_arguments()
        elif name == "Integer":
            digits = len(str(abs(self.parse_small_int())))
        elif name == "Pow":
            base = self.parse_expr()
            self.take(text=",")
            digits = base * max(1, abs(self.parse_exponent()))
        else:
            digits = self.parse_arguments(name)
        self.take(text=")")
        return digits

    def parse_symbol_arguments(self) -> int:
        quoted = self.take("quoted")
        if not _SYMBOL.fullmatch(quoted[1:-1]):
            raise _ExprRefused(f"symbol name {quoted} is not like s12 or u3")
        while self.peek() == ",":
            self.take()
            assumption = self.take("name")
            if assumption not in _SYMBOL_ASSUMPTIONS:
                raise _ExprRefused(f"{assumption!r} is not a symbol assumption")
            self.take(text="=")
            if self.take("name") not in ("True", "False"):
                raise _ExprRefused(f"assumption {assumption!r} is not True or False")
        return 1

    def parse_arguments(self, name: str) -> int:
        sizes = [self.parse_expr()]
        while self.peek() == ",":
            self.take()
            sizes.append(self.parse_expr())
            if len(sizes) > MAX_EXPR_CALL_ARGS:
                raise _ExprRefused(f"{name} has over {MAX_EXPR_CALL_ARGS} arguments")
        if name in _MULTIPLYING_CALLS:
            return sum(sizes)
        return max(sizes) + len(str(len(sizes)))  # a sum of n values has at most log10(n) more digits

    def parse_exponent(self) -> int:
        """A power's exponent: a small literal integer, so no tower and no symbolic exponent."""
        if self.peek() == "Integer":
            self.take()
            self.take(text="(")
            value = self.parse_small_int()
            self.take(text=")")
        else:
            value = self.parse_small_int()
        if abs(value) > MAX_EXPR_EXPONENT:
            raise _ExprRefused(f"an exponent of {value} (at most {MAX_EXPR_EXPONENT})")
        return value

    def parse_small_int(self) -> int:
        """A literal integer, optionally signed or parenthesised (the tokenizer caps its digits)."""
        if self.peek() == "(":
            self.take()
            value = self.nested(self.parse_small_int)
            self.take(text=")")
            return value
        sign = 1
        if self.peek() in ("-", "+"):
            sign = -1 if self.take() == "-" else 1
        return sign * int(self.take("int"))


def _bounded(digits: int) -> int:
    if digits > MAX_EXPR_VALUE_DIGITS:
        raise _ExprRefused(f"a value could reach {digits} digits (at most {MAX_EXPR_VALUE_DIGITS})")
    return digits


def _expr_tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].isspace():
            break
        token = _EXPR_TOKEN.match(text, position)
        if token is None:
            raise _ExprRefused(f"a character outside the grammar at {position}")
        kind = token.lastgroup or ""
        value = token.group(kind)
        if kind == "int" and len(value) > MAX_EXPR_INT_DIGITS:
            raise _ExprRefused(f"an integer of {len(value)} digits (at most {MAX_EXPR_INT_DIGITS})")
        tokens.append((kind, value))
        position = token.end()
    return tokens
