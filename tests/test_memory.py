"""Memory: the exact-pass check keeps no copy of the weights when the pass checks out, its failure path still
judges (and names the error), and every report row carries the process's peak resident memory."""

from __future__ import annotations

import time

import pytest
import torch
import torch.fx as fx
from torch import nn

import graphopt
from graphopt import PassContext, PassError, PassManager
from graphopt.passes import FoldBatchNorm
from graphopt.pipeline.driver import Fp32Snapshot
from graphopt.pipeline.instruments import NumericCheck
from graphopt.pipeline.pass_base import Pass, PassResult
from graphopt.pipeline.snapshots import float64_copy, release, structural_copy
from graphopt.reporting.memory import MIB, PeakWatch, current_rss_bytes
from graphopt.reporting.report import Report, StageRecord

#: Only the sampler needs /proc; the copies are checked everywhere.
needs_proc = pytest.mark.skipif(current_rss_bytes() is None, reason="needs /proc/self/statm (Linux)")


def _net() -> fx.GraphModule:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    model[1].running_mean.uniform_(-1, 1)
    return fx.symbolic_trace(model)


def _context() -> PassContext:
    return PassContext(example_inputs=(torch.randn(1, 3, 8, 8),))


class _Exact(Pass):
    exact = True

    def call(self, gm):
        self.rewrite(gm)
        return PassResult(gm, modified=True)

    def rewrite(self, gm):
        raise NotImplementedError


class ShiftBias(_Exact):
    """A wrong "exact" pass that replaces a parameter (as passes do): caught in float64 too."""

    name = "shift_bias"

    def rewrite(self, gm):
        gm.get_submodule("3").bias = nn.Parameter(gm.get_submodule("3").bias.detach() + 1.0)


class ScaleInPlace(_Exact):
    """A wrong "exact" pass that writes into a weight in place, through ``.data``."""

    name = "scale_in_place"

    def rewrite(self, gm):
        gm.get_submodule("3").weight.data.mul_(2.0)


def test_the_exact_check_keeps_the_previous_stage_without_copying_a_weight():
    gm, check = _net(), NumericCheck()
    check.before_pass(FoldBatchNorm(), gm, _context())
    kept = check._snapshot
    assert kept is not None and kept is not gm
    assert [t.data_ptr() for t in kept.parameters()] == [t.data_ptr() for t in gm.parameters()]
    assert [t.data_ptr() for t in kept.buffers()] == [t.data_ptr() for t in gm.buffers()]


def test_an_exact_pass_that_checks_out_deep_copies_no_tensor(monkeypatch):
    copied: list[tuple[int, ...]] = []
    for cls in (torch.Tensor, nn.Parameter):  # buffers, parameters
        monkeypatch.setattr(cls, "__deepcopy__", _spy(cls.__deepcopy__, copied))
    gm = _net()
    records = PassManager([FoldBatchNorm()]).run(gm, _context())
    assert records[0].modified and records[0].max_abs_change is not None
    assert copied == []


def _spy(deepcopy, copied):
    def spy(self, memo):
        copied.append(tuple(self.shape))
        return deepcopy(self, memo)

    return spy


def test_a_wrong_exact_pass_still_fails_with_its_max_abs_error():
    with pytest.raises(PassError, match=r"changed the outputs by up to 1\b.*in float64 the rewrite moved"):
        PassManager([ShiftBias()]).run(_net(), _context())


def test_a_pass_writing_weights_in_place_fails_closed_and_says_why():
    with pytest.raises(PassError, match=r"changed the outputs by up to .*wrote into the weights in place"):
        PassManager([ScaleInPlace()]).run(_net(), _context())


def test_float64_copy_converts_the_copy_only_and_release_frees_it():
    gm = _net()
    wide = float64_copy(gm)
    assert {p.dtype for p in wide.parameters()} == {torch.float64}
    assert {p.dtype for p in gm.parameters()} == {torch.float32}
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(wide(x.double()).float(), gm(x), rtol=1e-5, atol=1e-5)
    release(wide)
    assert not hasattr(wide, "graph")


def test_structural_copy_keeps_its_own_modules():
    gm = _net()
    kept = structural_copy(gm)
    gm.get_submodule("1").eps = 0.5  # a pass changing a module attribute leaves the copy alone
    assert kept.get_submodule("1").eps == pytest.approx(1e-5)


@needs_proc
def test_peak_watch_sees_memory_held_inside_the_window():
    watch = PeakWatch()
    watch.open()
    start = current_rss_bytes() or 0
    block = torch.ones(64 * MIB // 4)  # 64 MiB, every page touched
    time.sleep(0.2)  # held for 40 sampling intervals
    del block
    peak = watch.close()
    assert peak is not None and peak >= start + 60 * MIB


@needs_proc
def test_every_report_row_carries_the_peak_rss(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4))
    x = torch.randn(1, 3, 8, 8)
    res = graphopt.optimize(model.eval(), "generic-fp32", example_inputs=(x,))
    res.export(tmp_path / "m.onnx")
    peaks = [r.peak_rss_mib for r in res.report.stages]
    rss_now = (current_rss_bytes() or 0) / MIB
    assert all(p is not None and 0 < p < 2 * rss_now for p in peaks), peaks
    assert res.report.stages[-1].kind == "artifact"
    assert "peak RSS MiB" in str(res.report)


def test_the_peak_column_renders_and_round_trips():
    report = Report(model="m", target="t")
    report.add(StageRecord(stage="original", kind="original", params=1, macs=1, bytes=4, peak_rss_mib=812.4))
    text = str(report)
    assert "peak RSS MiB" in text and " 812 " in text
    assert report.to_dict()["stages"][0]["peak_rss_mib"] == 812.4


def test_bench_rows_carry_and_render_the_peak():
    from graphopt.benchmark.render import HEADER, cells
    from graphopt.benchmark.schema import BenchRow, _row

    row = BenchRow(model="m", pipeline="x86-int8", stage="calibrate", kind="stage", numeric="int8",
                   runtime="-", params=1, macs=1, bytes=4, peak_rss_mib=812.4)  # fmt: skip
    assert dict(zip(HEADER, cells(row), strict=True))["peak RSS MiB"] == "812"
    assert _row({**row.__dict__}).peak_rss_mib == 812.4  # JSON round trip keeps the field


class _Slotted(Pass):
    exact = False

    def __init__(self, slot: str):
        super().__init__()
        self.slot, self.name = slot, f"fake_{slot}"


def test_the_fp32_snapshot_shares_weights_until_a_pass_may_write_them():
    """The latency guard's fp32 model shares the graph's tensors through the int8 passes (they replace,
    never write), and is made private before a pass that may train in place (exits' joint fine-tuning)."""
    gm, snapshot = _net(), Fp32Snapshot()
    context = _context()
    snapshot.before_pass(_Slotted("int8"), gm, context)
    assert snapshot.model.get_submodule("0").weight is gm.get_submodule("0").weight
    snapshot.before_pass(_Slotted("exits"), gm, context)
    private = snapshot.model.get_submodule("0").weight
    assert private is not gm.get_submodule("0").weight
    before = private.detach().clone()
    with torch.no_grad():
        gm.get_submodule("0").weight.add_(1.0)  # what joint fine-tuning does to the backbone
    assert torch.equal(private, before)


class _Broken(Pass):
    name, description, exact = "broken", "raises", False

    def call(self, gm):
        raise RuntimeError("boom")


def test_a_failed_run_leaves_no_memory_sampler_running():
    """The sampler thread stops with the run even when a pass fails and the exception is kept (a notebook
    keeps the last one)."""
    import threading

    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(PassError) as kept:
        graphopt.optimize(model, example_inputs=(torch.randn(1, 3, 8, 8),), passes=[_Broken()])
    assert kept.value is not None
    assert not [t for t in threading.enumerate() if t.name == "graphopt-rss"]
