"""Writes that fail and files that do not load: a full disk, a read-only folder or a killed process leave
nothing behind and end in a GraphoptError naming the cause; a damaged artifact or a file graphopt did
not write is named as such, never blamed on graphopt or allowed to abort the process."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from graphopt.artifacts.destination import StagedFile, check_destination, save_file, write_bytes
from graphopt.errors import ExportError, InvalidInputError, SerializationError

# -- refused writes become a GraphoptError -----------------------------------------------------------------
REFUSED = [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EDQUOT, "disk quota is used up"),
    (errno.EFBIG, "file-size limit"),
    (errno.EROFS, "file system is read-only"),
    (errno.EACCES, "permission denied"),
]


@pytest.mark.parametrize(("code", "cause"), REFUSED)
def test_a_refused_write_in_a_staged_file_is_an_export_error_naming_destination_and_cause(
    tmp_path, code, cause
):
    destination = tmp_path / "m.onnx"
    refused = OSError(code, os.strerror(code))
    with (
        pytest.raises(
            ExportError, match=f"cannot write artifact {re.escape(str(destination))}: .*{cause}"
        ) as info,
        StagedFile(destination) as staged,
    ):
        staged.path.write_bytes(b"half")
        raise refused
    assert info.value.__cause__ is refused  # chained: the OSError stays in the traceback
    assert list(tmp_path.iterdir()) == []


def test_a_wrapped_refused_write_is_recognised_and_the_error_class_is_the_callers(tmp_path):
    """Exporters wrap the OSError in their own errors: the chain is followed; ``kind`` picks the class."""
    message = r"cannot write archive .*no space left on the device"
    with (
        pytest.raises(SerializationError, match=message),
        StagedFile(tmp_path / "m.pt2", "archive", SerializationError),
    ):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("torch: PytorchStreamWriter failed writing file") from exc
    assert list(tmp_path.iterdir()) == []


def test_other_errors_leave_a_staged_file_unchanged(tmp_path):
    with pytest.raises(ValueError, match="not a write"), StagedFile(tmp_path / "m.onnx"):
        raise ValueError("not a write")
    with pytest.raises(FileNotFoundError), StagedFile(tmp_path / "m.onnx"):  # an OSError, not a refused write
        raise FileNotFoundError(errno.ENOENT, "gone")
    assert list(tmp_path.iterdir()) == []


def test_write_bytes_removes_its_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pte"

    def half_then_full(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[:2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(ExportError, match=r"cannot write ExecuTorch program .*m\.pte: no space left"):
        write_bytes(path, b"program", "ExecuTorch program")
    assert not path.exists()


def test_save_file_keeps_the_previous_file_when_the_new_one_cannot_be_written(tmp_path, monkeypatch):
    report = tmp_path / "report.json"
    report.write_text('{"old": 1}')

    def quota_exceeded(self: Path, data: bytes) -> int:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(Path, "write_bytes", quota_exceeded)
    with pytest.raises(ExportError, match=r"cannot write report .*report\.json: the disk quota"):
        save_file(report, '{"new": 2}', "report")
    monkeypatch.undo()
    assert report.read_text() == '{"old": 1}' and sorted(p.name for p in tmp_path.iterdir()) == [
        "report.json"
    ]
    assert save_file(report, '{"new": 2}', "report").read_text() == '{"new": 2}'


# -- a real full disk: RLIMIT_FSIZE makes writes past n bytes fail with EFBIG --------------------------------
_FULL_DISK = """
import errno, json, resource, signal, sys
from pathlib import Path
import torch, graphopt
from graphopt.artifacts.destination import save_file

out = Path(sys.argv[1])
model = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4)).eval()
res = graphopt.optimize(model, target="generic-fp32", example_inputs=(torch.randn(1, 8),))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:  # the mechanism first: a plain write past the limit fails with EFBIG
    (out / "probe.bin").write_bytes(b"x" * 8192)
    print(json.dumps({"case": "probe", "error": None}))
except OSError as exc:
    print(json.dumps({"case": "probe", "error": errno.errorcode[exc.errno]}))
(out / "probe.bin").unlink()
cases = {
    "torchscript": lambda: res.export(out / "m.pt"),
    "onnx": lambda: res.export(out / "m.onnx"),
    "report": lambda: save_file(out / "report.json", "x" * 8192, "report"),
}
for case, write in cases.items():
    try:
        write()
        print(json.dumps({"case": case, "error": None}))
    except Exception as exc:
        graphopt_error = isinstance(exc, graphopt.GraphoptError)
        row = {"case": case, "error": type(exc).__name__, "graphopt": graphopt_error, "message": str(exc)}
        print(json.dumps(row))
print(json.dumps({"case": "left", "files": sorted(p.name for p in out.iterdir())}))
"""


def test_a_full_disk_ends_each_export_in_an_export_error_and_leaves_nothing(tmp_path):
    """TorchScript's C++ zip writer used to abort the process (SIGABRT) here; ONNX raised a bare OSError."""
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True, timeout=300
    )  # the timeout guards against a hang, it is not a timing
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {row["case"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert lines["probe"]["error"] == "EFBIG"
    for case, what in (("torchscript", "m.pt"), ("onnx", "m.onnx"), ("report", "report.json")):
        row = lines[case]
        assert row["error"] == "ExportError" and row["graphopt"], row
        assert f"{what}: the file is larger than" in row["message"] and "ulimit -f" in row["message"], row
    assert lines["left"]["files"] == []


# -- staging folders of killed processes -------------------------------------------------------------------
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: no process has this id (until the system reuses it)
    return child.pid


def test_a_staging_folder_names_graphopt_and_its_process(tmp_path):
    with StagedFile(tmp_path / "m.onnx") as staged:
        (folder,) = tmp_path.iterdir()
        assert re.fullmatch(rf"\.m\.onnx\.graphopt-[0-9a-f]{{8}}-{os.getpid()}-[a-z0-9_]{{8}}", folder.name)
        assert staged.path.parent == folder


def test_a_process_killed_inside_a_staged_file_leaves_a_folder_the_next_write_removes(tmp_path):
    destination = tmp_path / "m.onnx"
    # A child process killed with -9 halfway through writing, as the OOM killer would. A new interpreter,
    # not os.fork(): by now the suite has imported multithreaded libraries (JAX, through LiteRT), and a forked
    # child of a multithreaded process can deadlock.
    killed_halfway = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from graphopt.artifacts.destination import StagedFile\n"
        f"with StagedFile(Path({str(destination)!r})) as staged:\n"
        "    staged.path.write_bytes(b'half written')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", killed_halfway])
    assert child.wait() == -signal.SIGKILL
    (leftover,) = tmp_path.iterdir()
    assert f"-{child.pid}-" in leftover.name and (leftover / "m.onnx").read_bytes() == b"half written"

    check_destination(destination, "export path")  # the check before any work tidies already
    assert list(tmp_path.iterdir()) == []


def test_only_graphopts_own_folders_of_gone_processes_are_removed(tmp_path):
    with StagedFile(tmp_path / "probe") as staged:
        host = staged.path.parent.name.split("-")[1]
    gone, alive = _dead_pid(), os.getppid()
    keep = [
        f".m.onnx.graphopt-{host}-{alive}-abcd1234",  # a live process's export
        f".m.onnx.graphopt-0000beef-{gone}-abcd1234",  # another host's: its process ids mean nothing here
        f".m.onnx.{gone}-abcd1234",  # not graphopt's pattern
        f"graphopt-{host}-{gone}-abcd1234",  # not hidden
    ]
    for name in keep:
        (tmp_path / name).mkdir()
    (tmp_path / f".a.onnx.graphopt-{host}-{gone}-file1234").write_text("a file, not a staging folder")
    stale = tmp_path / f".b.onnx.graphopt-{host}-{gone}-abcd1234"
    (stale / "sub").mkdir(parents=True)

    with StagedFile(tmp_path / "m.onnx") as staged:
        mine = staged.path.parent.name
    assert not stale.exists()
    remaining = sorted(p.name for p in tmp_path.iterdir())
    assert remaining == sorted([*keep, f".a.onnx.graphopt-{host}-{gone}-file1234"]) and mine not in remaining


# -- artifacts that do not load ----------------------------------------------------------------------------
def test_a_damaged_torchscript_file_is_an_export_error(tmp_path):
    from graphopt.backends import TorchScriptRunner

    for name, data in (("random.pt", os.urandom(2000)), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ExportError, match=f"{name} is not a loadable TorchScript program"):
            TorchScriptRunner(tmp_path / name)


#: What ExecuTorch is given: random bytes (the runtime aborted the process on them), an empty file, and a
#: file with a program's identifier and a damaged body (the runtime raised a bare RuntimeError).
PTE_FILES = {
    "random.pte": os.urandom(3000),
    "empty.pte": b"",
    "damaged.pte": b"\x3c\x00\x00\x00ET12eh00" + os.urandom(3000),
}


@pytest.mark.parametrize("name", sorted(PTE_FILES))
def test_a_pte_executorch_cannot_load_is_an_export_error_naming_it(tmp_path, name):
    pytest.importorskip("executorch", reason="the executorch backend is optional")
    from graphopt.backends.executorch_backend import ExecuTorchRunner, describe_pte

    path = tmp_path / name
    path.write_bytes(PTE_FILES[name])
    for load in (ExecuTorchRunner, describe_pte):
        with pytest.raises(ExportError, match=f"{re.escape(str(path))} is not a loadable ExecuTorch program"):
            load(path)


# -- graphopt verify on files graphopt did not write -------------------------------------------------------
def _model_with(node: onnx.NodeProto) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _not_onnx_files(folder: Path) -> dict[str, tuple[Path, str]]:
    files = {
        "empty": (b"", "is empty \\(0 bytes\\), not an ONNX model"),
        "a model with no graph": (
            onnx.ModelProto(ir_version=8).SerializeToString(),
            "is not an ONNX model \\(it holds no graph",
        ),
        "dangling input": (
            _model_with(helper.make_node("Relu", ["nowhere"], ["y"])).SerializeToString(),
            "is not a valid ONNX model \\(.*nowhere",
        ),
        "unknown op": (
            _model_with(helper.make_node("NoSuchOp", ["x"], ["y"])).SerializeToString(),
            "is not a valid ONNX model \\(No Op registered for NoSuchOp",
        ),
    }
    out = {}
    for i, (name, (data, message)) in enumerate(files.items()):
        path = folder / f"{i}.onnx"
        path.write_bytes(data)
        out[name] = (path, message)
    return out


def test_verify_names_an_empty_or_invalid_file_instead_of_blaming_graphopt(tmp_path):
    """These fail before the foreign runtime is set up, so the test needs no emulator."""
    from graphopt.verify import verify_artifact

    for name, (path, message) in _not_onnx_files(tmp_path).items():
        with pytest.raises(InvalidInputError, match=message) as info:
            verify_artifact(path, "x86_64")
        assert "please report" not in str(info.value) and "graphopt wrote" not in str(info.value), name


def test_a_report_that_cannot_be_written_is_a_write_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    """Reports, bench results and IR dumps are written whole or not at all (save_file), and a refused
    write is a WriteError (a GraphoptError and an OSError) naming the file and the cause."""
    from graphopt.artifacts.destination import save_file
    from graphopt.errors import GraphoptError, WriteError

    target = tmp_path / "bench.json"
    target.write_text("previous")
    real = Path.write_bytes

    def full_disk(self, data):
        real(self, data[:3])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(WriteError, match="bench JSON") as caught:
        save_file(target, "{}" * 100, "bench JSON", WriteError)
    assert isinstance(caught.value, GraphoptError) and isinstance(caught.value, OSError)
    assert "no space" in str(caught.value).lower()
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # no staging folder left


def test_export_onnx_called_directly_says_the_disk_refused_the_file(tmp_path, monkeypatch):
    """Outside res.export (no staging layer), a refused write once read "Data-dependent Python control
    flow cannot be exported"."""
    from torch import nn

    from graphopt.backends.onnx_backend import export_onnx

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.onnx"))

    monkeypatch.setattr(torch.onnx, "export", full_disk)
    with pytest.raises(ExportError, match=r"cannot write ONNX model .*m\.onnx: no space left") as caught:
        export_onnx(nn.Linear(4, 2).eval(), (torch.randn(1, 4),), tmp_path / "m.onnx")
    assert "control flow" not in str(caught.value)
