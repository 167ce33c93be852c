"""Adversarial ``.pt2`` archives: ``graphopt.load`` refuses each one with a SerializationError, runs nothing,
hangs on nothing and allocates nothing big.

One small model with a dynamic batch and a dynamic sequence dim is exported once (so its program holds the
symbolic expressions torch really writes). Each case rebuilds its archive byte by byte with a raw zip
writer (Python's ``zipfile`` cannot write duplicates, lying headers or overlaps), planting payloads that
create a marker file if they ever ran. All hostile loads run in ONE subprocess under an address-space
limit and a timeout, which prints one line per case as it goes, so a hang or a blow-up names its case.
"""

from __future__ import annotations

import io
import json
import random
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

import graphopt
import graphopt.artifacts.serialize as serialize
from graphopt.errors import SerializationError
from tests.helpers import MarkerPayload

ROOT = "archive"
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_PROGRAM = "models/model.json"
_HEADER = "extra/graphopt.json"
_SYMBOL = "Symbol('s77', positive=True, integer=True)"
#: Address-space limit of the subprocess: torch imports in under 1 GiB; the bombs below declare 3-4 GiB.
_MEMORY_LIMIT = 3 << 30
#: Generous: the whole batch takes seconds; this only turns a hang into a failure that names its case.
_BATCH_TIMEOUT_S = 240


class _SeqModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.conv = nn.Conv1d(8, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(torch.relu(self.proj(x)).transpose(1, 2))
        return torch.cat([y, y], dim=2).flatten(1)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return _SeqModel().eval()


@pytest.fixture(scope="module")
def archive(model, tmp_path_factory) -> Path:
    """The model saved through graphopt's own archive writer, with dynamic batch and sequence dims."""
    dims = ({0: Dim("batch", max=64), 1: Dim("seq", min=3, max=512)},)
    program = torch.export.export(model, (torch.randn(2, 10, 8),), dynamic_shapes=dims, strict=False)
    path = tmp_path_factory.mktemp("fuzz") / "seq.pt2"
    path.write_bytes(serialize._archive_bytes(program, {"format": serialize.FORMAT, "version": 1}))
    return path


# ---------------------------------------------------------------- a raw zip writer


@dataclass(frozen=True)
class Entry:
    """One member as the raw writer lays it out; every field a reader trusts can be made to lie."""

    name: str
    data: bytes
    method: int = 0
    flags: int = 0
    crc: int | None = None
    local_name: str | None = None
    size: int | None = None  # declared uncompressed size
    compressed_size: int | None = None  # declared compressed size
    payload: bytes | None = None  # the bytes stored (default: data, deflated for method 8)
    inside: str | None = None  # write this member's local record inside the named member's data


def _stored(entry: Entry) -> bytes:
    if entry.payload is not None:
        return entry.payload
    if entry.method == 8:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        return deflater.compress(entry.data) + deflater.flush()
    return entry.data


def _local_record(entry: Entry) -> bytes:
    body = _stored(entry)
    crc = zlib.crc32(entry.data) if entry.crc is None else entry.crc
    size = len(entry.data) if entry.size is None else entry.size
    compressed = len(body) if entry.compressed_size is None else entry.compressed_size
    name = (entry.local_name or entry.name).encode()
    header = struct.pack(
        "<IHHHHHIIIHH",
        0x04034B50,
        20,
        entry.flags,
        entry.method,
        0,
        0x21,
        crc,
        compressed,
        size,
        len(name),
        0,
    )
    return header + name + body


def build(entries: list[Entry]) -> bytes:
    """A zip of ``entries`` exactly as described (no validation: that is the point)."""
    hosted = {e.inside: e for e in entries if e.inside}
    out, central = bytearray(), bytearray()
    for entry in entries:
        if entry.inside:
            continue
        offset = len(out)
        if entry.name in hosted:  # the hosted record sits in this member's data: the two overlap
            guest = hosted[entry.name]
            guest_offset = offset + 30 + len(entry.name) + len(entry.data)
            entry = replace(entry, data=entry.data + _local_record(guest))
            central += _central_record(guest, guest_offset)
        out += _local_record(entry)
        central += _central_record(entry, offset)
    start = len(out)
    out += central
    count = len(entries)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), start, 0)
    return bytes(out)


def _central_record(entry: Entry, offset: int) -> bytes:
    body = _stored(entry)
    crc = zlib.crc32(entry.data) if entry.crc is None else entry.crc
    size = len(entry.data) if entry.size is None else entry.size
    compressed = len(body) if entry.compressed_size is None else entry.compressed_size
    name = entry.name.encode()
    fields = (0x02014B50, 20, 20, entry.flags, entry.method, 0, 0x21, crc, compressed, size, len(name))
    return struct.pack("<IHHHHHHIIIHHHHHII", *fields, 0, 0, 0, 0, 0, offset) + name


def _members(path: Path) -> list[Entry]:
    from graphopt.artifacts.safe_zip import read_members

    return [Entry(name, data) for name, data in read_members(path.read_bytes()).items()]


# ---------------------------------------------------------------- hostile cases

Case = Callable[[list[Entry], Path], bytes]


def _named(entries: list[Entry], member: str) -> Entry:
    return next(e for e in entries if e.name == f"{ROOT}/{member}")


def _with(entries: list[Entry], member: str, **changes) -> list[Entry]:
    return [replace(e, **changes) if e.name == f"{ROOT}/{member}" else e for e in entries]


def _duplicated(entries: list[Entry], member: str, evil: bytes, evil_first: bool) -> list[Entry]:
    out = []
    for entry in entries:
        if entry.name == f"{ROOT}/{member}":
            pair = [replace(entry, data=evil), entry]
            out += pair if evil_first else pair[::-1]
        else:
            out.append(entry)
    return out


def _pickle_config(entries: list[Entry]) -> tuple[bytes, str]:
    config = json.loads(_named(entries, _WEIGHTS_CONFIG).data)
    entry = next(iter(config["config"].values()))
    entry["use_pickle"] = True
    return json.dumps(config).encode(), entry["path_name"]


def _torch_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(MarkerPayload(marker), buffer)
    return buffer.getvalue()


def _program_with(entries: list[Entry], expr: str) -> list[Entry]:
    """The program with its first symbolic expression replaced by ``expr``."""
    program = json.loads(_named(entries, _PROGRAM).data)
    pending = [program]
    while pending:  # the first dict holding an expr_str, breadth first
        value = pending.pop(0)
        if isinstance(value, dict) and "expr_str" in value:
            value["expr_str"] = expr
            return _with(entries, _PROGRAM, data=json.dumps(program).encode())
        pending.extend(
            value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        )
    raise AssertionError("the saved program holds no symbolic expression")


def _in_spec(spec: object) -> Case:
    """The program's input tree spec replaced: torch's reader imports a module named in a dict context's
    ``{"__enum__": ...}`` object and resolves node types by name."""

    def case(entries, marker):
        program = json.loads(_named(entries, _PROGRAM).data)
        program["graph_module"]["module_call_graph"][0]["signature"]["in_spec"] = json.dumps(spec)
        return build(_with(entries, _PROGRAM, data=json.dumps(program).encode()))

    return case


def _enum_context(fqn: str) -> list:
    context = json.dumps([{"__enum__": True, "fqn": fqn}])
    return [1, {"type": "builtins.dict", "context": context, "children_spec": [
        {"type": None, "context": None, "children_spec": []}]}]  # fmt: skip


def _duplicate_weights_config(evil_first: bool) -> Case:
    """The issue's exploit: one copy of the config (which torch reads) says use_pickle, and the weight it
    names is a pickle too; each order, since zip readers disagree on which duplicate wins."""

    def case(entries, marker):
        config, weight = _pickle_config(entries)
        planted = _duplicated(entries, _WEIGHTS_CONFIG, config, evil_first)
        return build(_duplicated(planted, f"data/weights/{weight}", _torch_pickle(marker), not evil_first))

    return case


def _duplicate_constants_config(evil_first: bool) -> Case:
    def case(entries, marker):
        config = {"config": {"c": {"path_name": "tensor_0", "is_param": False, "use_pickle": True}}}
        planted = _duplicated(entries, _CONSTANTS_CONFIG, json.dumps(config).encode(), evil_first)
        return build([*planted, Entry(f"{ROOT}/data/constants/tensor_0", _torch_pickle(marker))])

    return case


def _duplicate_program(evil_first: bool) -> Case:
    def case(entries, marker):
        evil = _named(_program_with(entries, f"open('{marker}', 'w') and {_SYMBOL}"), _PROGRAM).data
        return build(_duplicated(entries, _PROGRAM, evil, evil_first))

    return case


def _duplicate_weight(evil_first: bool) -> Case:
    def case(entries, marker):
        return build(_duplicated(entries, "data/weights/weight_0", _torch_pickle(marker), evil_first))

    return case


def _overlapping_members(entries, marker):
    return build([*entries, Entry(f"{ROOT}/data/constants/tensor_9", b"x" * 16, inside=entries[0].name)])


def _bad_crc(entries, marker):
    weight = _named(entries, "data/weights/weight_0")
    flipped = bytes([weight.data[0] ^ 0x40]) + weight.data[1:]
    return build(_with(entries, "data/weights/weight_0", data=flipped, crc=zlib.crc32(weight.data)))


def _local_name_mismatch(entries, marker):
    return build(_with(entries, "data/weights/weight_0", local_name=f"{ROOT}/data/weights/weight_99"))


def _method(method: int) -> Case:
    return lambda entries, marker: build(_with(entries, "data/weights/weight_0", method=method))


def _encrypted(entries, marker):
    return build(_with(entries, "data/weights/weight_0", flags=1))


def _declared(**sizes: int) -> Case:
    def case(entries, marker):
        weight = _named(entries, "data/weights/weight_0")
        changes = {key: len(weight.data) + delta for key, delta in sizes.items()}
        return build(_with(entries, "data/weights/weight_0", **changes))

    return case


def _bomb_payload(gib: int) -> bytes:
    """A deflate stream of ``gib`` GiB of zeros, a few MB long: after a full flush each MiB of zeros
    compresses to the same bytes, so the stream is built without compressing gigabytes."""
    deflater, chunk = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(1 << 20)
    first = deflater.compress(chunk) + deflater.flush(zlib.Z_FULL_FLUSH)
    repeat = deflater.compress(chunk) + deflater.flush(zlib.Z_FULL_FLUSH)
    return first + repeat * ((gib << 10) - 1) + deflater.flush()


def _bomb_declared(entries, marker):
    """Declares (almost) 4 GiB: refused by its declared size before anything is inflated."""
    return build(
        _with(entries, "data/weights/weight_0", method=8, payload=_bomb_payload(3), size=0xFFFFFFF0, crc=0)
    )


def _bomb_lying(entries, marker):
    """Declares its real small size but inflates to 3 GiB: refused one byte past the declared size."""
    return build(_with(entries, "data/weights/weight_0", method=8, payload=_bomb_payload(3)))


def _member_named(name: str) -> Case:
    return lambda entries, marker: build([*entries, Entry(name, b"{}")])


def _deep_json(member: str) -> Case:
    return lambda entries, marker: build(_with(entries, member, data=b"[" * 100_000 + b"]" * 100_000))


def _expression(expr: str) -> Case:
    return lambda entries, marker: build(_program_with(entries, expr.replace("MARKER", str(marker))))


def _tensor_meta(sizes: list[int], empty_payload: bool) -> Case:
    """A weight whose metadata claims more than its payload holds (torch allocates what an empty payload's
    metadata says: a memory bomb in a few bytes)."""

    def case(entries, marker):
        config = json.loads(_named(entries, _WEIGHTS_CONFIG).data)
        entry = next(e for e in config["config"].values() if e["path_name"] == "weight_0")
        entry["tensor_meta"]["sizes"] = [{"as_int": s} for s in sizes]
        entry["tensor_meta"]["strides"] = [{"as_int": 1} for _ in sizes]
        changed = _with(entries, _WEIGHTS_CONFIG, data=json.dumps(config).encode())
        return build(_with(changed, "data/weights/weight_0", data=b"") if empty_payload else changed)

    return case


def _header(text: bytes) -> Case:
    return lambda entries, marker: build(_with(entries, _HEADER, data=text))


#: 199 arguments: sympy's cost grows with their square (28 s to load before the cap).
_MANY_ARGUMENT_MAX = f"Max({', '.join(f's{i}' for i in range(1, 200))})"
_NAMEDTUPLE_SPEC = [1, {"type": "collections.namedtuple", "context": "null", "children_spec": []}]

CASES: dict[str, tuple[Case, str]] = {
    **{
        f"duplicate-{what}-evil-{order}": (make(order == "first"), "twice")
        for what, make in (
            ("weights-config", _duplicate_weights_config),
            ("constants-config", _duplicate_constants_config),
            ("program", _duplicate_program),
            ("weight", _duplicate_weight),
        )
        for order in ("first", "last")
    },
    "overlapping-members": (_overlapping_members, "overlap"),
    "bad-crc": (_bad_crc, "CRC"),
    "local-central-name-mismatch": (_local_name_mismatch, "local header naming another file"),
    "method-bzip2": (_method(12), "compression method"),
    "method-unknown": (_method(99), "compression method"),
    "encryption-flag": (_encrypted, "encrypted"),
    "over-declared-sizes": (_declared(size=1000, compressed_size=1000), "central directory|overlap"),
    "over-declared-size": (_declared(size=1000), "two different sizes"),
    "under-declared-sizes": (_declared(size=-8, compressed_size=-8), "CRC|local header|descriptor"),
    "bomb-declared-4GiB": (_bomb_declared, "inflate to"),
    "bomb-lying-3GiB": (_bomb_lying, "declared size"),
    "name-parent": (_member_named(f"{ROOT}/../evil"), "traversing"),
    "name-absolute": (_member_named(f"/{ROOT}/x"), "traversing"),
    "name-backslash": (_member_named(f"{ROOT}\\..\\x"), "traversing"),
    "name-nul": (_member_named(f"{ROOT}/a\x00b"), "traversing"),
    "deep-json-program": (_deep_json(_PROGRAM), "nests deeper"),
    "deep-json-weights-config": (_deep_json(_WEIGHTS_CONFIG), "nests deeper"),
    "deep-json-header": (_deep_json(_HEADER), "header"),
    "expr-power-tower": (_expression("10**10**10"), "shape grammar"),
    "expr-power-tower-4": (_expression("9**9**9**9"), "shape grammar"),
    "expr-pow-call-huge": (_expression("Pow(Integer(10), Integer(10000000))"), "exponent"),
    "expr-nested-pows": (_expression("Pow(Pow(Pow(Integer(99), 64), 64), 64)"), "digits"),
    "expr-huge-literal": (_expression("9" * 5000), "characters|digits"),
    "expr-long-literal": (_expression("9" * 100), "digits"),
    "expr-huge-product": (_expression("*".join(["99999999999999999999"] * 80)), "digits"),
    "expr-deep-nesting": (_expression("(" * 40 + "s77" + ")" * 40), "nests deeper"),
    "expr-import": (_expression("__import__('os').system('touch MARKER')"), "outside the shape grammar"),
    "expr-open": (_expression("open('MARKER', 'w') and s77"), "not a shape function"),
    "expr-attribute": (_expression("s77.__class__"), "outside the grammar"),
    "expr-lambda": (_expression("(lambda: open('MARKER', 'w'))()"), "outside the grammar|shape function"),
    "tensor-meta-larger-than-payload": (_tensor_meta([4096, 4096], empty_payload=False), "payload holds"),
    "tensor-meta-empty-payload-bomb": (_tensor_meta([100_000, 100_000], empty_payload=True), "payload holds"),
    "expr-max-many-arguments": (_expression(_MANY_ARGUMENT_MAX), "arguments"),
    "expr-parenthesised-exponent": (_expression("Pow(s77, " + "(" * 1500 + "2" + ")" * 1500 + ")"), "nests"),
    "treespec-enum-import": (_in_spec(_enum_context("this:x")), "tree spec context"),
    "treespec-namedtuple": (_in_spec(_NAMEDTUPLE_SPEC), "tree spec type"),
    "header-version-negative": (_header(b'{"format": "graphopt.pt2", "version": -5}'), "version"),
    "header-version-zero": (_header(b'{"format": "graphopt.pt2", "version": 0}'), "version"),
}
_FLIPS, _TRUNCATIONS = 60, 15


def _random_damage(raw: bytes) -> dict[str, bytes]:
    """Seeded single-bit flips at many offsets, and truncations."""
    rng = random.Random(38)
    damaged = {}
    for _ in range(_FLIPS):
        at = rng.randrange(len(raw))
        data = bytearray(raw)
        data[at] ^= 1 << rng.randrange(8)
        damaged[f"flip-{at}"] = bytes(data)
    for _ in range(_TRUNCATIONS):
        at = rng.randrange(len(raw))
        damaged[f"truncate-{at}"] = raw[:at]
    return damaged


_RUNNER = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    import torch, graphopt
    from graphopt.errors import GraphoptError

    x = torch.randn(3, 17, 8, generator=torch.Generator().manual_seed(0))
    expected = graphopt.load(sys.argv[1])(x)
    for path in sys.argv[2:]:
        message = ""
        try:
            same = torch.equal(graphopt.load(path)(x), expected)
            outcome = "loaded-same" if same else "loaded-different"
        except GraphoptError as exc:
            outcome, message = type(exc).__name__, str(exc)
        except BaseException as exc:  # what the test is looking for: anything that is not a GraphoptError
            outcome, message = "raw " + type(exc).__name__, str(exc)[:300]
        print(json.dumps([path, outcome, message]), flush=True)
    """
)


@pytest.fixture(scope="module")
def outcomes(archive, tmp_path_factory) -> dict[str, tuple[str, str, Path]]:
    """Every hostile archive loaded in one subprocess: ``{case: (outcome, message, marker)}``."""
    folder = tmp_path_factory.mktemp("hostile")
    entries = _members(archive)
    files, markers = {}, {}
    for name, (make, _) in CASES.items():
        markers[name] = folder / f"{name}.marker"
        files[name] = folder / f"{name}.pt2"
        files[name].write_bytes(make(entries, markers[name]))
    for name, data in _random_damage(archive.read_bytes()).items():
        markers[name] = folder / f"{name}.marker"
        files[name] = folder / f"{name}.pt2"
        files[name].write_bytes(data)
    by_path = {str(path): name for name, path in files.items()}
    command = [sys.executable, "-c", _RUNNER.format(limit=_MEMORY_LIMIT), str(archive), *by_path]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_BATCH_TIMEOUT_S)
        stdout, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        stdout, stderr = (exc.stdout or b"").decode(), "timed out"
    results = {}
    for line in stdout.splitlines():
        path, outcome, message = json.loads(line)
        results[by_path[path]] = (outcome, message, markers[by_path[path]])
    missing = [name for name in files if name not in results]
    assert not missing, f"the batch stopped at {missing[0]!r} (hang or crash): {stderr[-2000:]}"
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_archive_is_a_serialization_error_and_runs_nothing(outcomes, case):
    outcome, message, marker = outcomes[case]
    assert outcome == "SerializationError", f"{case}: {outcome}: {message}"
    assert re.search(CASES[case][1], message), message
    assert "re-save" in message or "graphopt" in message
    assert not marker.exists()


def test_random_damage_is_refused_or_harmless(outcomes):
    """A flipped bit or a cut file is refused, or (a byte no reader uses: a timestamp, padding) loads a
    model whose outputs are exactly the original's; it is never silently different, never raw."""
    damaged = {name: outcome for name, (outcome, _, _) in outcomes.items() if name not in CASES}
    assert len(damaged) > _FLIPS // 2  # seeded offsets may repeat
    assert set(damaged.values()) <= {"SerializationError", "loaded-same"}, damaged
    assert list(damaged.values()).count("SerializationError") > len(damaged) // 2


def test_a_model_with_dynamic_batch_and_sequence_dims_round_trips(model, archive):
    x = torch.randn(5, 23, 8)
    torch.testing.assert_close(graphopt.load(archive)(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_weight_with_a_bad_crc_is_refused(archive, tmp_path):
    path = tmp_path / "bad_crc.pt2"
    path.write_bytes(_bad_crc(_members(archive), tmp_path / "marker"))
    with pytest.raises(SerializationError, match=r"CRC-32.*re-save the model with OptimizeResult\.save"):
        graphopt.load(path)


def test_a_rebuilt_archive_still_loads(model, archive, tmp_path):
    """The raw writer itself makes loadable archives, so the refusals above are the checks' doing."""
    path = tmp_path / "rebuilt.pt2"
    path.write_bytes(build(_members(archive)))
    x = torch.randn(2, 9, 8)
    torch.testing.assert_close(graphopt.load(path)(x), model(x), rtol=1e-5, atol=1e-5)


_FULL_DISK = textwrap.dedent(
    """
    import errno, os, resource, signal, sys
    import torch
    from torch import nn
    import graphopt.artifacts.serialize as serialize
    from graphopt.errors import SerializationError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, no signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    probe = os.path.join(sys.argv[1], "probe")
    try:
        with open(probe, "wb") as f:
            f.write(bytes(8192))
        print("PROBE no-error")
    except OSError as exc:
        print("PROBE", errno.errorcode[exc.errno])
    os.remove(probe)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    try:
        serialize.save(model, (torch.randn(2, 64),), os.path.join(sys.argv[1], "out", "m.pt2"))
        print("SAVED")
    except SerializationError as exc:
        print("REFUSED", exc)
    """
)


def test_save_on_a_full_disk_is_a_serialization_error_and_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes writes past 4 KiB fail with EFBIG, as a full disk fails them with ENOSPC: torch's
    own zip writer would abort the process here; graphopt writes the file itself and reports it."""
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]  # the process survives (no SIGABRT)
    assert "PROBE EFBIG" in done.stdout, done.stdout  # the simulation really fails writes
    assert "REFUSED cannot write model archive" in done.stdout, done.stdout
    assert "file-size limit" in done.stdout and "choose a folder" in done.stdout, done.stdout
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []  # no file, no staging folder
