"""The ExecuTorch backend: ``.pte`` files on XNNPACK, fp32 and int8 from graphopt's own calibration."""

from __future__ import annotations

import functools

import pytest
import torch

import graphopt
from graphopt.artifacts.result import WRITTEN
from graphopt.backends import backend_for
from graphopt.errors import ConfigError, ExportError
from graphopt.zoo import get_model

pytest.importorskip(
    "executorch", reason="the executorch backend is optional: pip install 'graphopt[executorch]'"
)

from graphopt.backends.executorch_backend import (
    ExecuTorchRunner,
    describe_pte,
    export_executorch,
)
from graphopt.backends.executorch_form import xnnpack_form


@functools.cache
def _optimized(name: str, target: str) -> graphopt.OptimizeResult:
    """Each (model, target) optimized once for the file: the tests read the result and lower its model,
    none changes it (``res.export`` adds its artifact row, which only the test of that row reads)."""
    model, inputs = get_model(name).build()
    calibration = [torch.randn(8, *inputs[0].shape[1:]) for _ in range(2)]
    return graphopt.optimize(model, target, example_inputs=inputs, calibration_data=calibration)


@pytest.fixture(scope="module")
def resnet_int8_pte(tmp_path_factory):
    """resnet_basic int8 exported once through ``res.export`` (lowering a .pte takes seconds)."""
    res = _optimized("resnet_basic", "x86-int8")
    path = res.export(tmp_path_factory.mktemp("pte") / "m.pte", latency_guard=False)  # guard: xnnpack test
    return res, path


@pytest.mark.parametrize(
    ("name", "target"), [("resnet_basic", "x86-int8"), ("mobilenet_v2_tiny", "xnnpack-int8")]
)
def test_int8_reuses_graphopts_calibration_and_every_op_is_delegated(name, target, tmp_path, request):
    if name == "resnet_basic":
        res, path = request.getfixturevalue("resnet_int8_pte")
    else:
        res = _optimized(name, target)
        path = export_executorch(res.model, (res.example_inputs[0],), tmp_path / "m.pte")
    x = res.example_inputs[0]
    assert describe_pte(path).endswith("ops outside them: none)")  # convs, adds, pooling: all in XNNPACK
    got = torch.as_tensor(ExecuTorchRunner(path).run(x)[0])
    want = res.model(x)
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cosine >= 0.999, cosine  # the same int8 values as the eager simulation, XNNPACK's rounding


def test_the_xnnpack_form_computes_exactly_what_the_ir_computes():
    res = _optimized("resnet_basic", "x86-int8")
    x = torch.randn(2, *res.example_inputs[0].shape[1:])
    torch.testing.assert_close(xnnpack_form(res.model)(x), res.model(x), rtol=0, atol=0)


def test_fp32_export_matches_the_model_and_runs_any_batch(tmp_path):
    res = _optimized("resnet_basic", "generic-fp32")
    x = res.example_inputs[0]
    runner = ExecuTorchRunner(export_executorch(res.model, (x,), tmp_path / "m.pte"))
    torch.testing.assert_close(torch.as_tensor(runner.run(x)[0]), res.model(x), rtol=1e-4, atol=1e-5)
    batch = torch.randn(3, *x.shape[1:])
    torch.testing.assert_close(
        torch.as_tensor(runner.run_batched(batch)[0]), res.model(batch), rtol=1e-4, atol=1e-5
    )
    assert runner.time(x, warmup=1, repeat=3).median_ms > 0


def test_result_export_writes_a_pte_with_its_report_row(resnet_int8_pte):
    res, path = resnet_int8_pte
    assert path.suffix == ".pte" and backend_for(path).name == "executorch"
    row = res.report.artifact("executorch")
    written = row.note(WRITTEN).facts  # the writer's summary of the file: its delegates
    assert row.kind == "artifact" and written["file"] == path.name and "XnnpackBackend" in written["writer"]


def test_what_executorch_cannot_take_is_refused_and_leaves_no_file(tmp_path):
    res = _optimized("resnet_basic", "generic-fp32")
    with pytest.raises(ConfigError, match="example input's shapes"):
        backend_for("m.pte").lower(res.model, res.example_inputs, tmp_path / "a.pte", opset=17, engine="x86",
                                   dynamic=_batch_and_width())  # fmt: skip

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return x.numpy()  # leaves torch: torch.export refuses

    with pytest.raises(ExportError, match="ExecuTorch export failed"):
        export_executorch(Unexportable(), res.example_inputs, tmp_path / "b.pte")
    assert not list(tmp_path.iterdir())


def _batch_and_width():
    from graphopt.data.dims import DynamicDims

    return DynamicDims.of({"x": {3: "width"}}, ["x"], 1)


def test_without_executorch_the_error_names_the_extra(monkeypatch):
    import importlib.util

    from graphopt.backends import executorch_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "executorch" else real(n, *a))
    with pytest.raises(ConfigError, match=r"pip install 'graphopt\[executorch\]'"):
        executorch_backend.require_executorch()


def test_the_xnnpack_target_ships_a_pte_timed_against_fp32_in_executorch(digits, digits_model, tmp_path):
    res = graphopt.optimize(
        digits_model, "xnnpack-int8", example_inputs=(digits.test_x[:1],),
        calibration_data=[digits.train_x[:64]], eval_data=digits.test_batches(),
    )  # fmt: skip
    path = res.export(tmp_path / "digits.pte")
    row = res.report.artifact("executorch")
    assert "guard_int8_ms" in row.stats and row.stats["guard_fp32_ms"] > 0  # the guard timed both in ET
    assert row.accuracy >= res.report.stages[0].accuracy - 0.01  # measured on the .pte, sample by sample
    assert path.stat().st_size < 0.4 * sum(p.numel() * 4 for p in digits_model.parameters())


def test_bench_adds_executorchs_own_int8_flow_as_a_peer(digits, digits_model, tmp_path, monkeypatch):
    from graphopt.benchmark import models, parse_pipeline, peer_rows
    from graphopt.benchmark.peer_rows import build_peers

    # The ORT quantize_static peers (an export and a quantization each) are test_benchmark.py's rows: here
    # an int8 pipeline only has to bring in ExecuTorch's own flow next to the peers every run has.
    monkeypatch.setattr(peer_rows, "quantize_static_presets", dict)
    bench = models._digits("digits", digits_model, digits, None, None)
    peers, _ = build_peers(bench, [parse_pipeline("xnnpack-int8")], tmp_path)
    rows = {c.row.stage: c.row for c in peers}
    assert rows["ExecuTorch fp32"].runtime == rows["ExecuTorch PT2E int8"].runtime == "executorch"
    assert rows["ExecuTorch PT2E int8"].numeric == "int8"
    outputs = peers[-1].run(digits.test_x[:1])
    assert outputs[0].shape == (1, 10)


@pytest.mark.parametrize("target", ["xnnpack-int8"])
def test_early_exits_run_stage_by_stage_and_leave_where_the_model_leaves(
    digits, digits_model, target, tmp_path
):
    from graphopt.data.digits import batches
    from graphopt.early_exit import EarlyExitConfig, EarlyExitNetwork

    res = graphopt.optimize(
        digits_model, target, example_inputs=(digits.test_x[:1],), calibration_data=[digits.train_x[:64]],
        train_data=batches(digits.train_x, digits.train_y, 64),
        early_exit=EarlyExitConfig(exits=("features.6",), epochs=2, quiet=True, cost="macs"),
    )  # fmt: skip
    # cost="macs" keeps the exit whatever it saves in the runtime: its lowering is under test here
    (network,) = [m for m in res.model.modules() if isinstance(m, EarlyExitNetwork)]
    x = digits.test_x[:40]
    with torch.no_grad():
        sure = torch.softmax(network.forced_exit(0, x), -1).amax(-1)
    ranked = sure.sort().values  # half the samples leave at the head; none sits on the threshold
    network.thresholds.fill_(float(ranked[19] + ranked[20]) / 2)
    path = export_executorch(res.model, (x[:1],), tmp_path / "exits.pte")
    assert "methods exit_0, final" in describe_pte(path)
    runner = ExecuTorchRunner(path)
    left = 0
    for i in range(len(x)):
        sample = x[i : i + 1]
        got = torch.as_tensor(runner.run(sample)[0])
        leaves = bool(sure[i] >= network.thresholds[0])
        expected = network.forced_exit(0 if leaves else 1, sample)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        left += leaves
    assert 0 < left < len(x)  # both paths were taken, each matched


def test_pruned_and_sparse_models_lower_the_same_way(tmp_path):
    model, inputs = get_model("resnet_basic").build()
    data = {"calibration_data": [torch.randn(8, *inputs[0].shape[1:]) for _ in range(2)]}
    res = graphopt.optimize(model, "xnnpack-int8", example_inputs=inputs, **data, prune=0.5, sparsify=0.5)
    path = export_executorch(res.model, inputs, tmp_path / "m.pte")
    assert describe_pte(path).endswith("ops outside them: none)")
    got = torch.as_tensor(ExecuTorchRunner(path).run(inputs[0])[0])
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), res.model(inputs[0]).flatten(), dim=0)
    assert cosine >= 0.999
