"""Early exit: exactness of the branch, exit decisions in the artifacts, the batch rule, calibration,
errors."""

from __future__ import annotations

from collections import Counter

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import graphopt
from graphopt import ConfigError, EarlyExitConfig, InvalidInputError, PassError
from graphopt.artifacts.result import LATENCY_GUARD, LATENCY_GUARD_SKIPPED
from graphopt.backends import OnnxRunner, TorchScriptRunner
from graphopt.data.digits import batches
from graphopt.data.labelled import LabelledTensors
from graphopt.early_exit import EarlyExitNetwork
from graphopt.early_exit.measure import interleaved_per_sample, per_sample_accuracy
from graphopt.early_exit.reporting import EXITS_DISABLED
from graphopt.early_exit.thresholds import NEVER, calibrate, harm_allowed, route, samples_needed
from graphopt.early_exit.training import with_augmented_copies
from graphopt.passes.insert_early_exit import HELD_OUT_OF_TRAIN_DATA
from graphopt.reporting.notes import the_note
from tests.conftest import assert_unchanged, state_snapshot
from tests.helpers import digits_optimize_data

# MACs: these tests check what every exit does; which exits pay in the runtime is tests/test_exit_costs.py
CONFIG = EarlyExitConfig(exits=("features.2", "features.6"), epochs=10, quiet=True, cost="macs")


@pytest.fixture(scope="module")
def exited(digits_model, digits):
    before = state_snapshot(digits_model)
    result = graphopt.optimize(
        digits_model,
        example_inputs=(digits.test_x[:1],),
        train_data=batches(digits.train_x, digits.train_y, 64),
        eval_data=digits.test_batches(),
        early_exit=CONFIG,
    )
    assert_unchanged(digits_model, before, training=False)
    return result


def _network(result) -> EarlyExitNetwork:
    (network,) = [m for m in result.model.modules() if isinstance(m, EarlyExitNetwork)]
    return network


def test_never_exiting_computes_the_original(exited, digits_model, digits):
    network = _network(exited)
    saved = network.thresholds.clone()
    try:
        network.thresholds.fill_(NEVER)
        x = digits.test_x[:16]
        torch.testing.assert_close(exited.model(x), digits_model(x), rtol=1e-5, atol=1e-5)
    finally:
        network.thresholds.copy_(saved)


@pytest.mark.parametrize("k", [0, 1])
def test_forced_exit_at_head_k_is_head_k_alone(exited, digits, k):
    network = _network(exited)
    saved = network.thresholds.clone()
    try:
        network.thresholds.fill_(NEVER)
        network.thresholds[k] = -NEVER
        x = digits.test_x[:16]
        torch.testing.assert_close(exited.model(x), network.forced_exit(k, x), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(network.forced_exit(k, x), network.forced_exit(2, x), atol=1e-3)
    finally:
        network.thresholds.copy_(saved)


def test_thresholds_are_calibrated_and_reported(exited):
    stats = exited.report.stage("insert_early_exit").stats
    assert stats["exits"] == 2 and stats["expected_macs_share"] < 1
    assert stats["heldout_accuracy"] >= stats["heldout_accuracy_without_exits"] - CONFIG.accuracy_budget / 100
    rows = exited.report.tables["early_exit"]
    assert [r["exit"] for r in rows] == ["features.2", "features.6", "final classifier"]
    rates = [float(str(r["exit_rate"]).rstrip("%")) for r in rows]
    assert sum(rates) == pytest.approx(100, abs=0.2) and rates[1] > 0


def test_artifacts_take_the_same_exits_as_eager(exited, digits, tmp_path):
    onnx = OnnxRunner(exited.export(tmp_path / "m.onnx"))
    script = TorchScriptRunner(exited.export(tmp_path / "m.pt"))
    network = _network(exited)
    exits_seen = set()
    for i in range(40):
        x = digits.test_x[i : i + 1]
        expected = exited.model(x)
        exits_seen |= {k for k in range(3) if torch.allclose(network.forced_exit(k, x), expected, atol=1e-6)}
        for runner in (onnx, script):
            (got,) = runner.run(x)
            torch.testing.assert_close(torch.as_tensor(got), expected, rtol=1e-4, atol=1e-4)
    assert len(exits_seen) >= 2  # the test set exercises more than one branch


def test_artifact_row_measures_per_sample_over_the_data_set(exited, digits, tmp_path):
    exited.export(tmp_path / "m.onnx", measure_latency=True, repeat=5)
    row = exited.report.stages[-1]
    assert row.stats["dataset_mean_ms"] > 0 and row.stats["dataset_latency_ratio"] > 0
    eager = per_sample_accuracy(exited.model, exited.eval_data)
    assert row.accuracy == pytest.approx(eager, abs=1 / 360)


def test_pruning_and_early_exit_in_one_call(digits_model, digits):
    result = graphopt.optimize(
        digits_model,
        example_inputs=(digits.test_x[:1],),
        train_data=batches(digits.train_x, digits.train_y, 64),
        prune=0.5,
        recovery=graphopt.RecoveryConfig(epochs=2, quiet=True),
        early_exit=EarlyExitConfig(exits=("features.6",), epochs=5, quiet=True, cost="macs"),
    )
    stages = [s.stage for s in result.report.stages]
    assert stages[:4] == ["original", "prune_channels", "reestimate_batchnorm", "recover"]
    assert stages[-1] == "insert_early_exit"
    network = _network(result)
    assert network.segments[0].get_submodule("features.0").out_channels == 16  # pruned, then cut


def test_branch_weights_live_inside_the_branches(exited, tmp_path):
    """ORT's NCHWc transformer only rewrites convs whose weights are initializers of their own graph."""
    model = onnx.load(str(exited.export(tmp_path / "m.onnx")))
    (branch_node,) = [n for n in model.graph.node if n.op_type == "If"]
    go_on = next(a.g for a in branch_node.attribute if a.name == "else_branch")
    conv_weights = {n.input[1] for n in go_on.node if n.op_type == "Conv"}
    assert conv_weights and conv_weights <= {i.name for i in go_on.initializer}
    assert not conv_weights & {i.name for i in model.graph.initializer}


def test_a_batch_exits_only_when_every_sample_is_confident(exited, digits):
    network = _network(exited)
    x = digits.test_x[:64]
    with torch.no_grad():
        confidence = torch.softmax(network.forced_exit(1, x), -1).amax(-1)
    sure, unsure = int(confidence.argmax()), int(confidence.argmin())
    saved = network.thresholds.clone()
    try:
        between = float(confidence[sure] + confidence[unsure]) / 2  # the sure one passes, the unsure not
        network.thresholds.copy_(torch.tensor([NEVER, between]))
        pair = x[[sure, unsure]]
        torch.testing.assert_close(exited.model(x[[sure]]), network.forced_exit(1, x[[sure]]))
        torch.testing.assert_close(
            exited.model(pair), network.forced_exit(2, pair)
        )  # the unsure one holds all
    finally:
        network.thresholds.copy_(saved)


def test_a_budget_no_threshold_meets_leaves_the_exits_disabled():
    labels = torch.arange(10).repeat(10)
    wrong = torch.nn.functional.one_hot((labels + 1) % 10, 10).float() * 5  # a confident, always wrong head
    right = torch.nn.functional.one_hot(labels, 10).float() * 5
    routing = calibrate([wrong, right], labels, [1.0, 10.0], budget_pp=0.0, criterion="max_prob")
    assert routing.thresholds == [NEVER] and routing.accuracy == 1.0 and routing.expected_cost == 10.0


def _one_head(samples: int, wrong: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A head that is right on every sample but the first ``wrong``, and surest on those; a perfect final
    classifier."""
    labels = torch.arange(samples) % 10
    predicted = labels.clone()
    predicted[:wrong] = (labels[:wrong] + 1) % 10
    head = torch.nn.functional.one_hot(predicted, 10).float() * 4
    head[:wrong] *= 2  # confidently wrong
    return [head, torch.nn.functional.one_hot(labels, 10).float() * 9], labels


@pytest.mark.parametrize(("wrong", "exits"), [(2, True), (3, False)])
def test_thresholds_keep_one_sample_of_margin_under_the_budget(wrong, exits):
    # 1000 held-out samples, 0.3 pp: the plain rule would allow harm 3 (0.3 %); conformal risk control
    # allows (harm + 1) / 1001 <= 0.003, i.e. harm 2.
    logits, labels = _one_head(1000, wrong)
    routing = calibrate(logits, labels, [1.0, 10.0], budget_pp=0.3, criterion="max_prob")
    if exits:
        assert routing.thresholds[0] < NEVER and routing.harm == wrong and routing.expected_cost == 1.0
    else:
        assert routing.thresholds == [NEVER] and routing.harm == 0 and routing.expected_cost == 10.0


def test_too_few_held_out_samples_certify_no_budget():
    logits, labels = _one_head(300, 0)  # a perfect head, but 300 samples cannot certify 0.3 pp
    assert harm_allowed(300, 0.3) == -1 and harm_allowed(333, 0.3) == 0
    for budget in (0.25, 0.3, 0.5, 1.0, 2.0, 10.0):  # samples_needed inverts harm_allowed at zero harm
        needed = samples_needed(budget)
        assert harm_allowed(needed, budget) == 0 and harm_allowed(needed - 1, budget) == -1
    assert samples_needed(0.0) is None
    routing = calibrate(logits, labels, [1.0, 10.0], budget_pp=0.3, criterion="max_prob")
    assert routing.thresholds == [NEVER]
    assert calibrate(logits, labels, [1.0, 10.0], budget_pp=1.0, criterion="max_prob").thresholds[0] < NEVER


def test_harm_counts_against_the_network_before_training():
    logits, labels = _one_head(20, 0)
    reference = torch.ones(20, dtype=torch.bool)
    reference[0] = False  # the network without exits got sample 0 wrong: routing it wrong is no harm
    logits[0][0] = torch.nn.functional.one_hot(torch.tensor(5), 10).float() * 8
    routing = route(
        [torch.ones(20)], [logits[0].argmax(-1) == labels, reference], [1.0, 2.0], [0.5], reference
    )
    assert routing.harm == 0 and routing.accuracy == pytest.approx(0.95)
    assert route([torch.ones(20)], [logits[0].argmax(-1) == labels, reference], [1.0, 2.0], [0.5]).harm == 0
    assert route([torch.ones(20)], [reference, labels >= 0], [1.0, 2.0], [0.5]).harm == 1


def test_validation_data_calibrates_the_thresholds(digits_model, digits):
    train, validation = batches(digits.train_x[:1000], digits.train_y[:1000], 64), digits.test_batches()
    config = EarlyExitConfig(exits=("features.6",), epochs=2, quiet=True, cost="macs")
    result = graphopt.optimize(
        digits_model, example_inputs=(digits.test_x[:1],), train_data=train, early_exit=config,
        validation_data=validation,
    )  # fmt: skip
    stats = result.report.stage("insert_early_exit").stats
    assert stats["heldout_samples"] == len(digits.test_y) and stats["head_samples"] == 1000
    assert HELD_OUT_OF_TRAIN_DATA not in result.report.note_keys()


def test_without_validation_data_the_report_warns(exited):
    assert exited.report.note(HELD_OUT_OF_TRAIN_DATA).facts["samples"] == 360


def test_a_small_validation_set_says_how_many_samples_the_budget_needs(digits_model, digits):
    result = graphopt.optimize(
        digits_model,
        example_inputs=(digits.test_x[:1],),
        train_data=batches(digits.train_x[:256], digits.train_y[:256], 64),
        validation_data=batches(digits.test_x[:200], digits.test_y[:200], 100),
        early_exit=EarlyExitConfig(exits=("features.6",), epochs=1, quiet=True, cost="macs"),
    )
    facts = the_note(result.report, EXITS_DISABLED).facts
    assert facts["too_few_samples"] and (facts["samples_needed"], facts["samples"]) == (333, 200)
    assert _network(result).thresholds.tolist() == [NEVER]


def test_the_heads_are_the_same_whatever_ran_before_in_the_process(digits_model, digits):
    """Seeded head initialization: a search's cluster worker, or a rerun from the on-disk cache, rebuilds the
    candidate byte for byte only if the heads do not depend on the process's random state."""
    heads = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # what earlier work in the process left
        result = graphopt.optimize(
            digits_model, example_inputs=(digits.test_x[:1],),
            train_data=batches(digits.train_x[:128], digits.train_y[:128], 64),
            early_exit=EarlyExitConfig(exits=("features.6",), epochs=1, quiet=True, cost="macs"),
        )  # fmt: skip
        heads.append(_network(result).heads.state_dict())
    assert heads[0].keys() == heads[1].keys()
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


def test_heads_train_on_augmented_copies():
    data = LabelledTensors((torch.arange(6.0).view(3, 2), torch.ones(3, 1)), torch.tensor([0, 1, 2]))
    config = EarlyExitConfig(augment=lambda x, generator: -x, augment_copies=2)
    grown = with_augmented_copies(data, config)
    assert len(grown) == 9 and grown.labels.tolist() == [0, 1, 2] * 3
    torch.testing.assert_close(grown.inputs[0], torch.cat([data.inputs[0], -data.inputs[0], -data.inputs[0]]))
    assert grown.inputs[1].shape == (9, 1)
    assert with_augmented_copies(data, EarlyExitConfig()) is data  # no augment: the data as given


def test_early_exit_needs_labelled_data(digits_model, digits):
    with pytest.raises(InvalidInputError, match="needs train_data"):
        graphopt.optimize(digits_model, example_inputs=(digits.test_x[:1],), early_exit=EarlyExitConfig())


def test_unknown_exit_point_lists_the_closest(digits_model, digits):
    with pytest.raises(PassError, match=r"closest exit points: features\.2"):
        graphopt.optimize(
            digits_model,
            example_inputs=(digits.test_x[:1],),
            train_data=batches(digits.train_x[:256], digits.train_y[:256], 64),
            early_exit=EarlyExitConfig(exits=("features.20",), quiet=True, cost="macs"),
        )


class _FeatureMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def test_a_model_without_logits_is_refused(digits):
    with pytest.raises(InvalidInputError, match="classifier-like"):
        graphopt.optimize(
            _FeatureMap(),
            example_inputs=(digits.test_x[:1],),
            train_data=batches(digits.train_x[:128], digits.train_y[:128], 64),
            early_exit=EarlyExitConfig(quiet=True),
        )


@pytest.mark.parametrize("bad", [dict(accuracy_budget=-1.0), dict(fractions=(0.0,)), dict(exits="stages.0")])
def test_bad_early_exit_options(bad):
    with pytest.raises(ConfigError):
        EarlyExitConfig(**bad)


def test_joint_fine_tuning_trains_the_backbone_too(digits_model, digits):
    result = graphopt.optimize(
        digits_model,
        example_inputs=(digits.test_x[:1],),
        train_data=batches(digits.train_x[:512], digits.train_y[:512], 64),
        early_exit=EarlyExitConfig(exits=("features.6",), epochs=2, joint_epochs=1, quiet=True, cost="macs"),
    )
    stats = result.report.stage("insert_early_exit").stats
    assert stats["joint_epochs"] == 1 and stats["joint_final_loss"] > 0
    network = _network(result)
    first_conv = network.segments[0].get_submodule("features.0")
    assert not torch.equal(first_conv.weight, digits_model.features[0].weight)


def _op_counts(graph: onnx.GraphProto) -> Counter[str]:
    """Op counts of ``graph`` and every subgraph inside it."""
    counts = Counter(n.op_type for n in graph.node)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                counts += _op_counts(attribute.g)
    return counts


@pytest.fixture(scope="module")
def int8_exited(digits_model, digits):
    return graphopt.optimize(
        digits_model,
        "x86-int8",
        **digits_optimize_data(digits),
        recovery=graphopt.RecoveryConfig(epochs=1, quiet=True),
        early_exit=EarlyExitConfig(exits=("features.6",), quiet=True, cost="macs"),
    )


def test_int8_backbone_with_exits_fuses_inside_the_branches(int8_exited, tmp_path):
    result = int8_exited
    assert [s.stage for s in result.report.stages][-3:] == ["calibrate", "qat", "insert_early_exit"]
    path = result.export(tmp_path / "m.onnx", latency_guard=False)
    row = result.report.stages[-1]
    assert not {LATENCY_GUARD, LATENCY_GUARD_SKIPPED} & set(row.note_keys())
    assert row.accuracy == pytest.approx(per_sample_accuracy(result.model, result.eval_data), abs=2 / 360)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = _op_counts(onnx.load(options.optimized_model_filepath).graph)
    assert ops["QLinearConv"] == 3 and ops["QGemm"] == 1 and ops["Conv"] == 0  # the branch's conv too
    with pytest.raises(graphopt.ExportError, match="int8 model with early exits"):
        result.export(tmp_path / "m.pt")


def test_the_fp32_twin_of_an_exit_model_keeps_its_exits_and_drops_its_quantizers(int8_exited, digits):
    from graphopt.early_exit.guard import exit_float_twin
    from graphopt.quant import is_quantized

    twin = exit_float_twin(int8_exited.model)
    assert is_quantized(int8_exited.model) and not is_quantized(twin)
    int8_net = _network(int8_exited)
    (fp32_net,) = [m for m in twin.modules() if isinstance(m, EarlyExitNetwork)]
    assert torch.equal(fp32_net.thresholds, int8_net.thresholds) and fp32_net.heads is not int8_net.heads
    x = digits.test_x[:64]
    with torch.no_grad():
        for a, b in zip(int8_net.all_exits(x), fp32_net.all_exits(x), strict=True):
            assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


@pytest.mark.parametrize(("int8_ms", "fp32_ms"), [(1.0, 2.0), (2.0, 1.0)])
def test_the_latency_guard_times_an_exit_model_per_sample_and_ships_the_faster(
    int8_exited, tmp_path, monkeypatch, int8_ms, fp32_ms
):
    """The guard's decision, with the timing fixed so both outcomes are checked: the shipped file is the
    chosen network (exits kept either way), and the row says which and on what it was timed."""
    import graphopt.artifacts.result

    timed: list[int] = []

    def fixed(runners, samples, passes):
        timed.append(len(samples))
        assert set(runners) == {"int8", "fp32"} and all(s[0].shape[0] == 1 for s in samples)
        return {"int8": int8_ms, "fp32": fp32_ms}

    monkeypatch.setattr(graphopt.artifacts.side_by_side, "sample_mean_latencies", fixed)
    path = int8_exited.export(tmp_path / "guarded.onnx")
    row = int8_exited.report.stages[-1]
    assert timed == [200]  # 256 calibration images given, the guard takes its 200
    guard = row.note(LATENCY_GUARD).facts
    assert (guard["per_sample"], guard["samples"]) == (True, 200)
    ops = _op_counts(onnx.load(str(path)).graph)
    assert ops["If"] == 1
    if int8_ms < fp32_ms:
        assert guard["shipped"] == "int8" and ops["QuantizeLinear"] > 0 and row.stats["shipped_fp32"] == 0
    else:
        assert guard["shipped"] == "fp32" and ops["QuantizeLinear"] == 0
        assert row.backend == "onnx" and row.stats["shipped_fp32"] == 1


def test_heads_train_on_a_seeded_subset_when_the_feature_cache_would_not_fit(exited):
    from graphopt.early_exit.training import cached_features, within_cache_budget

    network = _network(exited)
    data = LabelledTensors((torch.randn(300, 1, 8, 8),), torch.randint(0, 10, (300,)))
    per_sample = sum(
        t.numel() * t.element_size() for t in cached_features(network, data.subset(torch.arange(1)))
    )
    config = EarlyExitConfig(batch_size=64, cache_bytes=100 * per_sample, seed=3)
    kept = within_cache_budget(network, data, config)
    assert len(kept) == 100
    again = within_cache_budget(network, data, config)
    torch.testing.assert_close(kept.inputs[0], again.inputs[0])  # seeded: the same subset every run
    assert within_cache_budget(network, data, EarlyExitConfig()) is data  # 2 GB: all of it
    assert exited.report.stage("insert_early_exit").stats["head_samples_available"] > 0


def test_per_sample_timing_runs_every_call_once_in_interleaved_blocks():
    """Runner after runner over the same share of their samples (lists of any length), not one sample
    through every runner: a call after another runner's would pay for refilling the caches."""
    order: list[tuple[str, int]] = []
    calls = {
        name: [lambda name=name, i=i: order.append((name, i)) for i in range(count)]
        for name, count in (("a", 10), ("b", 10), ("c", 5))
    }
    times = interleaved_per_sample(calls, block=4)
    assert {name: len(t) for name, t in times.items()} == {"a": 10, "b": 10, "c": 5}
    assert all((t >= 0).all() for t in times.values())
    assert order[:3] == [("a", 0), ("b", 0), ("c", 0)]  # one untimed warm-up call each
    timed = order[3:]
    assert sorted(timed) == sorted((n, i) for n, c in (("a", 10), ("b", 10), ("c", 5)) for i in range(c))
    runs = [name for k, (name, _) in enumerate(timed) if k == 0 or timed[k - 1][0] != name]
    assert runs == ["a", "b", "c"] * 3  # three blocks (10 samples, 4 per block), runner after runner
    assert [i for name, i in timed if name == "c"] == list(range(5))  # each runner's share, in order
