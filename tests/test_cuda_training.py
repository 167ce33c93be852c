"""Training stages on a GPU: recovery (distillation after pruning), QAT, sparsity-keeping recovery and the
Fashion recipe's chain run on CUDA when ``RecoveryConfig(device="cuda")`` asks, reach what the same stage
reaches on the CPU, say in the report where they trained, and hand back a CPU model that exports.

Skipped without CUDA (CI has none); on a GPU machine: ``python -m pytest tests/test_cuda_training.py``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import graphopt
from graphopt.benchmark.models import FASHION_RECIPE
from graphopt.data.digits import batches, random_shift
from graphopt.passes.sparsify import SparsifyConfig
from graphopt.quant import QuantizedLayer
from graphopt.recovery import OptimizerConfig, RecoveryConfig
from graphopt.zoo.resnet import resnet_digits
from tests.conftest import assert_unchanged, state_snapshot
from tests.helpers import clipping_int8_target

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ON_GPU = "trained_on:cuda"


def _all_on_cpu(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return all(t.device.type == "cpu" for t in tensors)


def _common(digits) -> dict:
    return dict(example_inputs=(digits.test_x[:1],), eval_data=digits.test_batches(),
                train_data=batches(digits.train_x, digits.train_y, 64))  # fmt: skip


def test_distillation_after_pruning_trains_on_the_gpu_as_well_as_on_the_cpu(digits_model, digits, tmp_path):
    before = state_snapshot(digits_model)
    config = RecoveryConfig(epochs=4, optimizer=OptimizerConfig(lr=0.01), schedule="onecycle", quiet=True)
    runs = {
        device: graphopt.optimize(digits_model, prune=0.5, recovery=replace(config, device=device),
                                  **_common(digits))
        for device in ("cuda", "cpu")
    }  # fmt: skip
    gpu, cpu = (runs[d].report.stage("recover") for d in ("cuda", "cpu"))
    assert gpu.stats[ON_GPU] == 1 and not any(k.startswith("trained_on") for k in cpu.stats)
    assert gpu.accuracy > 0.9 and abs(gpu.accuracy - cpu.accuracy) <= 0.03, (gpu.accuracy, cpu.accuracy)
    assert _all_on_cpu(runs["cuda"].model) and _all_on_cpu(digits_model)
    assert_unchanged(digits_model, before, training=False)
    runs["cuda"].export(tmp_path / "gpu.onnx", latency_guard=False)
    assert runs["cuda"].report.stages[-1].accuracy == pytest.approx(gpu.accuracy, abs=0.006)


def test_qat_on_the_gpu_recovers_what_post_training_quantization_lost(digits_model, digits, tmp_path):
    common = {**_common(digits), "calibration_data": [digits.train_x[i : i + 32] for i in range(0, 128, 32)]}
    ptq = graphopt.optimize(digits_model, clipping_int8_target(), **{**common, "train_data": None})
    config = RecoveryConfig(epochs=3, optimizer=OptimizerConfig(lr=1e-4), quiet=True, device="cuda")
    qat = graphopt.optimize(digits_model, clipping_int8_target(), recovery=config, **common)
    row = qat.report.stage("qat")
    assert row.stats[ON_GPU] == 1
    assert row.accuracy >= ptq.report.stages[-1].accuracy + 0.04
    layers = [m for m in qat.model.modules() if isinstance(m, QuantizedLayer)]
    assert layers and all(m.frozen for m in layers) and _all_on_cpu(qat.model)
    qat.export(tmp_path / "qat.onnx", latency_guard=False)
    assert abs(qat.report.stages[-1].accuracy - row.accuracy) <= 0.006  # the int8 artifact keeps it


def test_sparsity_masks_hold_through_recovery_on_the_gpu(digits_model, digits):
    recovery = RecoveryConfig(epochs=2, augment=random_shift, quiet=True, device="cuda")
    res = graphopt.optimize(digits_model, sparsify=SparsifyConfig(sparsity=0.8, recovery=recovery),
                            recovery=recovery, **_common(digits))  # fmt: skip
    assert res.report.stage("recover").stats[ON_GPU] == 1
    layers = [m for m in res.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)
    assert zeros >= 0.8 - 1e-3 and res.report.stages[-1].accuracy > 0.9


def test_the_fashion_recipe_chain_trains_channels_last_on_the_gpu():
    """The bench's Fashion chain (prune 0.5, BatchNorm re-estimation, distillation, int8 QAT; one-cycle,
    channels-last) on the 28x28 ResNet, with synthetic labelled data: every training stage ran on the GPU
    and the result is an int8 CPU model."""
    torch.manual_seed(0)
    model = resnet_digits().eval()
    images, labels = torch.randn(512, 1, 28, 28), torch.randint(0, 10, (512,))
    recipe = replace(FASHION_RECIPE, epochs=1, quiet=True, device="cuda")
    res = graphopt.optimize(
        model, "x86-int8", prune=graphopt.PruneConfig(ratio=0.5, skip_int8_if_slower=False),
        example_inputs=(images[:1],), calibration_data=[images[:64]],
        train_data=batches(images, labels, 128), validation_data=batches(images[:128], labels[:128], 128),
        recovery=recipe,
    )  # fmt: skip
    trained = [s for s in res.report.stages if s.stage in ("recover", "qat")]
    assert [s.stage for s in trained] == ["recover", "qat"]
    assert all(s.stats[ON_GPU] == 1 for s in trained)
    assert _all_on_cpu(res.model) and any(isinstance(m, QuantizedLayer) for m in res.model.modules())
    weights = [p for p in res.model.parameters() if p.dim() == 4]
    assert all(w.is_contiguous() for w in weights)  # back in the default format after channels-last
