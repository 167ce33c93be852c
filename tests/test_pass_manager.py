from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.fx as fx
from torch import nn

import graphopt
from graphopt import ConfigError, Pass, PassContext, PassError, PassManager, PassOptions, PassResult
from graphopt.passes import EliminateDeadCode, FoldBatchNorm, RemoveIdentity
from graphopt.pipeline.instruments import IRDump
from graphopt.zoo import get_model
from tests.helpers import captured, outputs


def _resnet() -> tuple[fx.GraphModule, tuple[torch.Tensor, ...]]:
    model, inputs = get_model("resnet_basic").build()
    return captured(model), inputs


class ScaleOutput(Pass):
    """A deliberately wrong 'exact' pass: it changes the outputs."""

    name = "scale_output"
    description = "Multiply the output by 2 (wrong on purpose)."
    exact = True

    def call(self, gm):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            doubled = gm.graph.call_function(torch.mul, (out.args[0], 2.0))
        out.args = (doubled,)
        return PassResult(gm, modified=True, stats={"scaled": 1})


class ReturnsCopy(Pass):
    name = "returns_copy"
    description = "Returns a new GraphModule instead of mutating (a contract violation)."
    exact = True

    def call(self, gm):
        return PassResult(fx.GraphModule(gm, gm.graph), modified=False)


class Crashes(Pass):
    name = "crashes"
    description = "Raises from inside."
    exact = False

    def call(self, gm):
        raise IndexError("list index out of range")


def test_exact_pass_that_changes_outputs_is_caught():
    gm, inputs = _resnet()
    with pytest.raises(
        PassError, match=r"pass 'scale_output' failed: .*changed the outputs.*already run: fold_batchnorm"
    ):
        PassManager([FoldBatchNorm(), ScaleOutput()]).run(gm, PassContext(example_inputs=inputs))


class NudgeOutput(Pass):
    """Adds ``delta`` to output element 0: rounding-sized or not, depending on the test."""

    name = "nudge_output"
    description = "Add a small constant to one logit."
    exact = True
    delta = 0.0

    def call(self, gm):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        bump = torch.zeros(10)
        bump[0] = self.delta
        gm.register_buffer("bump", bump)
        with gm.graph.inserting_before(out):
            nudged = gm.graph.call_function(torch.add, (out.args[0], gm.graph.get_attr("bump")))
        out.args = (nudged,)
        return PassResult(gm, modified=True)


@pytest.mark.parametrize(("delta", "caught"), [(2e-3, False), (0.1, True)])
def test_exactness_is_judged_relative_to_the_size_of_the_outputs(delta, caught):
    # Logits near 100: float rounding through a deep network moves a logit near 0 by ~1e-3, which
    # element-wise rtol would call a change; a real change (0.1) is still caught.
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, *([100.0] * 9)]))
    gm, inputs = captured(model), (torch.randn(1, 3, 2, 2),)
    nudge = type("Nudge", (NudgeOutput,), {"delta": delta})()
    run = lambda: PassManager([nudge]).run(gm, PassContext(example_inputs=inputs))  # noqa: E731
    if caught:
        with pytest.raises(PassError, match=r"changed the outputs by up to 0.1 .*x max\(1, max\|outputs\|\)"):
            run()
    else:
        (record,) = run()
        assert record.max_abs_change == pytest.approx(delta, rel=1e-2)


def test_lossy_pass_is_not_held_to_exactness():
    gm, inputs = _resnet()

    class LossyScale(ScaleOutput):
        exact = False

    (record,) = PassManager([LossyScale()]).run(gm, PassContext(example_inputs=inputs))
    assert record.modified and record.max_abs_change is None


def test_pass_must_work_in_place():
    gm, inputs = _resnet()
    with pytest.raises(PassError, match="must mutate and return the GraphModule it was given"):
        PassManager([ReturnsCopy()]).run(gm, PassContext(example_inputs=inputs))


def test_crash_is_wrapped_naming_the_pass_and_history():
    gm, inputs = _resnet()
    with pytest.raises(PassError) as info:
        PassManager([FoldBatchNorm(), RemoveIdentity(), Crashes()]).run(
            gm, PassContext(example_inputs=inputs)
        )
    assert info.value.pass_name == "crashes"
    assert info.value.already_run == ["fold_batchnorm", "remove_identity"]
    assert isinstance(info.value.__cause__, IndexError)


def test_records_sizes_time_and_stats():
    gm, inputs = _resnet()
    records = PassManager([FoldBatchNorm(), EliminateDeadCode()]).run(gm, PassContext(example_inputs=inputs))
    fold = records[0]
    assert fold.name == "fold_batchnorm" and fold.exact and fold.modified
    assert fold.after.nodes < fold.before.nodes and fold.after.params < fold.before.params
    assert fold.after.macs == fold.before.macs > 0
    assert fold.seconds >= 0 and fold.stats == {"folded": 9}
    assert fold.max_abs_change is not None and fold.max_abs_change < 1e-5


def test_shapes_are_refreshed_after_each_pass():
    gm, inputs = _resnet()
    PassManager([FoldBatchNorm()]).run(gm, PassContext(example_inputs=inputs))
    for node in gm.graph.nodes:
        if node.op == "call_module":
            assert "shape" in node.meta and "dtype" in node.meta
    assert next(n for n in gm.graph.nodes if n.op == "placeholder").meta["shape"] == (1, 3, 32, 32)


class OneAtATime(Pass):
    """Removes one identity per call: needs a fixed point to remove them all."""

    name = "one_at_a_time"
    description = "Remove the first nn.Identity."
    exact = True

    def call(self, gm):
        for node in gm.graph.nodes:
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                return PassResult(gm, modified=True, stats={"removed": 1})
        return PassResult(gm, modified=False, stats={"removed": 0})


def test_fixed_point_steps():
    model = nn.Sequential(nn.Linear(3, 3), nn.Identity(), nn.Identity(), nn.Identity())
    gm = captured(model)
    ctx = PassContext(example_inputs=(torch.randn(1, 3),))
    records = PassManager([OneAtATime()], steps=10).run(gm, ctx)
    assert [r.modified for r in records] == [True, True, True, False]
    assert [r.step for r in records] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="steps"):
        PassManager([OneAtATime()], steps=0)


def test_ir_dump_writes_one_file_per_pass(tmp_path):
    gm, inputs = _resnet()
    PassManager([FoldBatchNorm(), EliminateDeadCode()], instruments=[IRDump(tmp_path)]).run(
        gm, PassContext(example_inputs=inputs)
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["000_original.txt", "001_fold_batchnorm.txt", "002_eliminate_dead_code.txt"]
    assert "bn1" in (tmp_path / "000_original.txt").read_text()
    assert "bn1" not in (tmp_path / "001_fold_batchnorm.txt").read_text()


class Requires(Pass):
    name = "needs_linear"
    description = "Requires a linear layer."
    exact = True

    def requires(self, gm):
        if not any(isinstance(m, nn.Linear) for m in gm.modules()):
            raise ValueError("no nn.Linear in the graph")

    def call(self, gm):
        return PassResult(gm, modified=False)


def test_requires_is_checked():
    gm = captured(nn.Sequential(nn.Conv2d(1, 1, 1)))
    with pytest.raises(PassError, match=r"no nn\.Linear in the graph"):
        PassManager([Requires()]).run(gm, PassContext(example_inputs=(torch.randn(1, 1, 2, 2),)))


@dataclass(frozen=True)
class ThresholdOptions(PassOptions):
    threshold: float = 0.5

    def __post_init__(self):
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold}")


class Thresholded(Pass):
    name = "thresholded"
    description = "A pass with typed options."
    exact = False
    Options = ThresholdOptions

    def call(self, gm):
        assert self.context.example_inputs  # the context is bound during a managed call
        return PassResult(gm, modified=False, stats={"threshold_x100": int(self.options.threshold * 100)})


def test_typed_options_are_validated_at_construction():
    assert Thresholded(threshold=0.25).options.threshold == 0.25
    assert Thresholded(ThresholdOptions(0.75)).options.threshold == 0.75
    with pytest.raises(ConfigError, match=r"threshold must be in \[0, 1\]"):
        Thresholded(threshold=3)
    with pytest.raises(ConfigError, match="its options are: threshold"):
        Thresholded(treshold=0.1)
    with pytest.raises(ConfigError, match="takes ThresholdOptions"):
        Thresholded(PassOptions())


def test_register_and_run_an_outside_pass():
    graphopt.register_pass(Thresholded)
    assert graphopt.list_passes()["thresholded"] == "A pass with typed options."
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    x = torch.randn(2, 4)
    res = graphopt.optimize(model, example_inputs=(x,), passes=["fold_batchnorm", Thresholded(threshold=0.3)])
    assert [r.stage for r in res.report.stages] == ["original", "fold_batchnorm", "thresholded"]
    assert res.report.stage("thresholded").stats == {"threshold_x100": 30}
    torch.testing.assert_close(outputs(res.model, x), outputs(model.eval(), x), rtol=1e-5, atol=1e-5)


def test_register_rejects_bad_classes():
    with pytest.raises(ConfigError, match="Pass subclass"):
        graphopt.register_pass(int)

    class NoName(Pass):
        description = "x"
        exact = True

    with pytest.raises(ConfigError, match=r"must define .name."):
        graphopt.register_pass(NoName)

    class Clash(Pass):
        name = "fold_batchnorm"
        description = "another one"
        exact = True

    with pytest.raises(ConfigError, match="already registered"):
        graphopt.register_pass(Clash)


def test_builtin_names_are_module_stems():
    from graphopt.passes import BUILTIN_PASSES

    for cls in BUILTIN_PASSES:
        assert cls.__module__.rsplit(".", 1)[-1] == cls.name
        assert cls.name in graphopt.list_passes()
