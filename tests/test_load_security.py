"""``graphopt.load`` never runs code from the file: tampered archives are refused before anything is read.

Each case takes an archive graphopt saved, plants a payload that would create a marker file if it ever ran
(a pickle whose ``__reduce__`` opens the file, a sympy string that calls ``open``, Python source in the
program), and asserts that ``load`` raises :class:`SerializationError` and the marker does not exist.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

import graphopt
from graphopt.errors import SerializationError
from graphopt.zoo import get_model
from tests.helpers import MarkerPayload


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    model, (x,) = get_model("resnet_basic").build()
    res = graphopt.optimize(model, "generic-fp32", example_inputs=(x,))
    return res.save(tmp_path_factory.mktemp("saved") / "model.pt2")


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy the archive ``src`` to ``dst``, passing ``{member: bytes}`` (names under the root) to ``edit``."""
    with zipfile.ZipFile(src) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        members = {n.split("/", 1)[1]: archive.read(n) for n in archive.namelist()}
    edit(members)
    with zipfile.ZipFile(dst, "w") as out:
        for name, data in members.items():
            out.writestr(f"{root}/{name}", data)
    return dst


def _edit_program(members: dict[str, bytes], change) -> None:
    program = json.loads(members["models/model.json"])
    change(program)
    members["models/model.json"] = json.dumps(program).encode()


def _pickled_weight(marker: Path):
    def edit(members):
        config = json.loads(members["data/weights/model_weights_config.json"])
        entry = next(iter(config["config"].values()))
        entry["use_pickle"] = True
        members["data/weights/model_weights_config.json"] = json.dumps(config).encode()
        buffer = io.BytesIO()
        torch.save(MarkerPayload(marker), buffer)
        members[f"data/weights/{entry['path_name']}"] = buffer.getvalue()

    return edit


def _pickled_sample_inputs(marker: Path):
    def edit(members):
        members["data/sample_inputs/model.pt"] = pickle.dumps(MarkerPayload(marker))

    return edit


def _legacy_weights_file(marker: Path):
    def edit(members):
        members["data/weights/model.pt"] = pickle.dumps(MarkerPayload(marker))

    return edit


def _opaque_constant(marker: Path):
    def edit(members):
        config = {"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}}}
        members["data/constants/model_constants_config.json"] = json.dumps(config).encode()
        members["data/constants/opaque_obj_0"] = pickle.dumps(MarkerPayload(marker))

    return edit


def _sympy_expression(marker: Path):
    def change(program):
        values = program["graph_module"]["graph"]["tensor_values"]
        size = next(s for v in values.values() for s in v["sizes"] if "as_expr" in s)
        size["as_expr"]["expr_str"] = f"open('{marker}', 'w') and Symbol('s77', positive=True, integer=True)"

    return lambda members: _edit_program(members, change)


def _guards_code(marker: Path):
    return lambda members: _edit_program(
        members, lambda p: p.__setitem__("guards_code", [f"open('{marker}', 'w') is None"])
    )


def _node_name(marker: Path):
    def change(program):
        node = program["graph_module"]["graph"]["nodes"][-1]
        node["name"] = f"x = open('{marker}', 'w'); y"

    return lambda members: _edit_program(members, change)


def _file_writing_target(marker: Path):
    def change(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.save"

    return lambda members: _edit_program(members, change)


TAMPERINGS = [
    _pickled_weight,
    _pickled_sample_inputs,
    _legacy_weights_file,
    _opaque_constant,
    _sympy_expression,
    _guards_code,
    _node_name,
    _file_writing_target,
]


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda f: f.__name__.strip("_"))
def test_a_tampered_archive_is_refused_and_runs_nothing(saved, tmp_path, tamper):
    marker = tmp_path / "marker"
    archive = _rewrite(saved, tmp_path / "tampered.pt2", tamper(marker))
    with pytest.raises(SerializationError) as info:
        model = graphopt.load(archive)
        model(torch.randn(1, 3, 32, 32))  # reached only if load accepted it: running must not fire either
    assert not marker.exists()
    assert "graphopt" in str(info.value)


def test_an_untampered_rewritten_archive_still_loads(saved, tmp_path):
    """The rewriting helper itself keeps a good archive loadable (so the refusals above are the checks')."""
    model, (x,) = get_model("resnet_basic").build()
    copy = _rewrite(saved, tmp_path / "copy.pt2", lambda members: None)
    torch.testing.assert_close(graphopt.load(copy)(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "header",
    [
        b"[1, 2]",
        b'{"format": "graphopt.pt2", "version": "1"}',
        b'{"format": "graphopt.pt2", "version": 99}',
        b'{"format": "graphopt.pt2", "version": -5}',
        b'{"format": "graphopt.pt2", "version": 0}',
        b"not json",
        b"[" * 50_000 + b"]" * 50_000,
    ],
    ids=[
        "json-list",
        "version-string",
        "version-newer",
        "version-negative",
        "version-zero",
        "not-json",
        "deep",
    ],
)
def test_a_bad_header_is_a_serialization_error(saved, tmp_path, header):
    archive = _rewrite(saved, tmp_path / "header.pt2", lambda m: m.__setitem__("extra/graphopt.json", header))
    with pytest.raises(SerializationError, match=r"header|version"):
        graphopt.load(archive)


def test_a_file_that_is_not_a_zip_is_a_serialization_error(tmp_path):
    path = tmp_path / "junk.pt2"
    path.write_bytes(pickle.dumps(MarkerPayload(tmp_path / "marker")))
    with pytest.raises(SerializationError, match="not a zip"):
        graphopt.load(path)
    assert not (tmp_path / "marker").exists()
