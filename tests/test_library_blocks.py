"""Building blocks of popular model libraries, written by hand (no timm): each is what whole families of
timm / torchvision models are made of, so pruning and int8 must go through them.

- ``BatchNormAct2d``: a BatchNorm2d subclass whose forward asserts ``x.ndim == 4`` (a ``getattr`` in the
  graph), calls ``F.batch_norm`` on its own tensors, then an activation (timm's CNNs);
- a module that reads another module's weight as an attribute (EdgeNeXt's positional encoding reads
  ``token_projection.weight`` for its dtype and device);
- cascaded group attention with BatchNorm on its projections (EfficientViT): conv + BN projections, one with
  zero-initialised BN gain, a depthwise conv + BN on the queries, a learned attention-bias table indexed by
  a buffer, and a BatchNorm1d before the classifier;
- a weight-standardized conv (timm's ``ScaledStdConv2d``, NFNets): a Conv2d subclass that standardizes its
  weight per output channel with ``F.batch_norm(training=True)`` and a learned gain at every call.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.backends import OnnxRunner
from graphopt.frontend.capture import capture
from graphopt.pruning.config import PruneConfig
from graphopt.pruning.exactness import zero_then_prune
from graphopt.reporting.numerics import Tolerance, agreement, allclose


class BatchNormAct2d(nn.BatchNorm2d):
    def __init__(self, channels: int):
        super().__init__(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        torch._assert(x.ndim == 4, "expected 4D input")  # timm's check: a getattr of ndim in the graph
        x = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )
        return self.act(x)


class TimmStyleCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), BatchNormAct2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), BatchNormAct2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class PositionalEncoding(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.token_projection = nn.Conv2d(8, channels, 1)

    def forward(self, x):
        weight = self.token_projection.weight  # read as an attribute, for its dtype and device
        grid = torch.linspace(0, 1, x.shape[-1], device=weight.device, dtype=weight.dtype)
        position = grid.view(1, 1, 1, -1).expand(x.shape[0], 8, x.shape[-2], x.shape[-1])
        return x + self.token_projection(position)


class EdgeNextStyleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.pos, self.head = (
            nn.Conv2d(3, 16, 3, padding=1),
            PositionalEncoding(16),
            nn.Linear(16, 10),
        )

    def forward(self, x):
        return self.head(self.pos(torch.relu(self.stem(x))).mean((2, 3)))


class ConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 1, groups: int = 1, gain: float = 1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(c_out))
        nn.init.constant_(self.bn.weight, gain)


class CascadedGroupAttention(nn.Module):
    def __init__(self, dim: int = 32, key_dim: int = 8, heads: int = 2, resolution: int = 7):
        super().__init__()
        self.heads, self.key_dim, self.d, self.scale = heads, key_dim, dim // heads, key_dim**-0.5
        self.qkvs = nn.ModuleList([ConvBN(self.d, 2 * key_dim + self.d) for _ in range(heads)])
        self.dws = nn.ModuleList([ConvBN(key_dim, key_dim, 5, groups=key_dim) for _ in range(heads)])
        self.proj = nn.Sequential(nn.ReLU(), ConvBN(self.d * heads, dim, gain=0.0))
        points = list(itertools.product(range(resolution), range(resolution)))
        offsets: dict[tuple[int, int], int] = {}
        idxs = [
            offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets))
            for a in points
            for b in points
        ]
        self.attention_biases = nn.Parameter(torch.randn(heads, len(offsets)))
        self.register_buffer("bias_idxs", torch.tensor(idxs).view(len(points), len(points)), persistent=False)

    def forward(self, x):
        b, _, h, w = x.shape
        chunks, outs, feat = x.chunk(self.heads, dim=1), [], None
        biases = self.attention_biases[:, self.bias_idxs]
        for i, qkv in enumerate(self.qkvs):
            feat = chunks[i] if feat is None else feat + chunks[i]
            q, k, v = qkv(feat).view(b, -1, h, w).split([self.key_dim, self.key_dim, self.d], dim=1)
            q, k, v = self.dws[i](q).flatten(2), k.flatten(2), v.flatten(2)
            attn = ((q.transpose(-2, -1) @ k) * self.scale + biases[i]).softmax(dim=-1)
            feat = (v @ attn.transpose(-2, -1)).view(b, self.d, h, w)
            outs.append(feat)
        return self.proj(torch.cat(outs, 1))


class EfficientVitStyleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.attn = ConvBN(3, 32, 3), CascadedGroupAttention()
        self.norm, self.head = nn.BatchNorm1d(32), nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.attn(x)
        return self.head(self.norm(x.mean((2, 3))))


def _with_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and gains (random-init ones are 0 / 1 and fold to nothing)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 3)
                m.weight.uniform_(0.2, 2)
                m.bias.uniform_(-1, 1)
    return model.eval()


def _int8_artifact_agrees(model: nn.Module, x: torch.Tensor, tmp_path) -> float:
    """x86-int8 exported to ONNX and run in ONNX Runtime: cosine to the eager int8 simulation."""
    res = graphopt.optimize(
        model, "x86-int8", example_inputs=(x,), calibration_data=[torch.randn(8, *x.shape[1:])]
    )
    res.model.graph.lint()
    path = res.export(tmp_path / "m.onnx", latency_guard=False)
    probe = torch.randn(2, *x.shape[1:])
    with torch.no_grad():
        eager = res.model(probe)
    return agreement(eager, OnnxRunner(path).run(probe)).cosine


def test_a_batchnorm_subclass_calling_functional_batch_norm_is_a_batchnorm_to_every_pass(tmp_path):
    model, x = _with_statistics(TimmStyleCnn()), torch.randn(1, 3, 16, 16)
    gm = capture(copy.deepcopy(model)).gm  # capture shares modules with what it traces: a private copy
    assert not [n for n in gm.graph.nodes if n.target is F.batch_norm]  # lifted to bn1.bn, bn2.bn
    assert isinstance(gm.get_submodule("bn1.bn"), nn.BatchNorm2d)
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)

    run = zero_then_prune(gm, (x,), PruneConfig(ratio=0.5))  # pruning removes channels exactly
    ok, err = allclose(run.zeroed, run.pruned, Tolerance(rtol=1e-5, atol=1e-5))
    assert ok, err
    assert run.removed == 24 and run.macs_after < run.macs_before / 3
    assert gm.get_submodule("bn1.bn").running_mean.shape == (8,)

    res = graphopt.optimize(
        model, example_inputs=(x,), prune=0.5, calibration_data=[torch.randn(8, 3, 16, 16)]
    )
    assert res.report.stage("reestimate_batchnorm").stats["batches"] == 1  # the lifted BN is re-estimated
    assert res.report.stage("fold_batchnorm").stats["folded"] == 2
    assert _int8_artifact_agrees(model, x, tmp_path) >= 0.999


def test_a_layer_whose_weight_another_module_reads_still_quantizes_and_exports(tmp_path):
    model, x = EdgeNextStyleNet().eval(), torch.randn(1, 3, 16, 16)
    assert _int8_artifact_agrees(model, x, tmp_path) >= 0.999


def test_cascaded_group_attention_with_batchnorm_projections_folds_exactly_and_quantizes(tmp_path):
    model, x = _with_statistics(EfficientVitStyleNet()), torch.randn(1, 3, 7, 7)
    res = graphopt.optimize(model, "generic-fp32", example_inputs=(x,))
    fold = res.report.stage("fold_batchnorm")
    assert fold.stats["folded"] == 6  # stem, two qkv, two depthwise, proj; not the BatchNorm1d after a mean
    assert fold.stats["skipped:no_foldable_producer"] == 1
    assert fold.agreement.max_abs < 1e-5  # float rounding only
    probe = torch.randn(3, 3, 7, 7)
    torch.testing.assert_close(res.model(probe), model(probe), rtol=1e-5, atol=1e-5)
    assert _int8_artifact_agrees(model, x, tmp_path) >= 0.999


@pytest.mark.parametrize("training", [True])
def test_a_training_mode_functional_batch_norm_is_left_alone(training):
    class AlwaysBatchStats(nn.BatchNorm2d):
        def forward(self, x):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training)

    model = nn.Sequential(nn.Conv2d(3, 4, 1), AlwaysBatchStats(4)).eval()
    gm = capture(model).gm
    assert [n for n in gm.graph.nodes if n.target is F.batch_norm]  # batch statistics: not a BN module


class ScaledStdConv2d(nn.Conv2d):
    """timm's: ``W' = gain * scale * (W - mean_o) / sqrt(var_o + eps)`` computed in forward."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__(cin, cout, k, padding=k // 2)
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)
        self.scale = (cin * k * k) ** -0.5

    def forward(self, x):
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None,
            weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0, eps=1e-6,
        ).reshape_as(self.weight)  # fmt: skip
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class NfNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.conv = ScaledStdConv2d(3, 16, 3), ScaledStdConv2d(16, 32, 3)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(F.gelu(self.conv(F.gelu(self.stem(x)))).mean((2, 3)))


def test_weight_standardized_convs_become_plain_convs_that_prune_exactly_and_quantize(tmp_path):
    model, x = NfNetStyle().eval(), torch.randn(2, 3, 12, 12)
    gm = capture(copy.deepcopy(model)).gm
    assert type(gm.get_submodule("conv")) is nn.Conv2d  # the standardized weight baked in
    assert not [n for n in gm.graph.nodes if n.target in (F.batch_norm, F.conv2d)]
    torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-6)

    run = zero_then_prune(gm, (x,), PruneConfig(ratio=0.5))  # was: no producer, nothing pruned
    ok, err = allclose(run.zeroed, run.pruned, Tolerance(rtol=1e-5, atol=1e-5))
    assert ok, err
    assert run.removed == 24 and run.macs_after < run.macs_before / 3
    assert _int8_artifact_agrees(model, x[:1], tmp_path) >= 0.999
