"""Property-based: random small conv / linear / residual / concat networks through generic-fp32 and both
backends keep their outputs (1e-5 in torch, 1e-4 relative in the artifacts), and prune exactly under any
selection."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

import graphopt
from graphopt.backends import OnnxRunner, TorchScriptRunner
from graphopt.frontend.capture import capture
from graphopt.ir.shapes import propagate_shapes
from graphopt.pruning import PruneConfig, analyze, choose, remove_units, unit_scores
from graphopt.pruning.exactness import zero_units
from graphopt.zoo import randomize_batchnorm
from tests.helpers import outputs

BLOCKS = ("conv_bn", "conv_bn_relu", "residual", "concat", "depthwise", "dropout", "identity")


class RandomNet(nn.Module):
    def __init__(self, blocks: list[str], width: int, in_channels: int, classes: int):
        super().__init__()
        self.blocks = blocks
        self.layers = nn.ModuleList()
        c = in_channels
        for kind in blocks:
            if kind in ("conv_bn", "conv_bn_relu"):
                layer = [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width)]
                layer += [nn.ReLU()] if kind == "conv_bn_relu" else []
                self.layers.append(nn.Sequential(*layer))
                c = width
            elif kind == "residual":
                self.layers.append(
                    nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
                )
            elif kind == "concat":
                self.layers.append(nn.Sequential(nn.Conv2d(c, 4, 1), nn.BatchNorm2d(4)))
                c += 4
            elif kind == "depthwise":
                self.layers.append(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c)))
            elif kind == "dropout":
                self.layers.append(nn.Dropout(0.3))
            else:
                self.layers.append(nn.Identity())
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c * 16, 16), nn.BatchNorm1d(16), nn.Linear(16, classes)
        )

    def forward(self, x):
        for kind, layer in zip(self.blocks, self.layers, strict=True):
            if kind == "residual":
                x = torch.relu(x + layer(x))
            elif kind == "concat":
                x = torch.cat([x, layer(x)], dim=1)
            else:
                x = layer(x)
        return self.head(nn.functional.adaptive_avg_pool2d(x, 4))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
    width=st.integers(2, 12),
    in_channels=st.integers(1, 4),
    size=st.integers(4, 12),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_random_networks_keep_their_outputs(blocks, width, in_channels, size, batch, seed):
    torch.manual_seed(seed)
    model = RandomNet(blocks, width, in_channels, classes=5)
    randomize_batchnorm(model)
    model.eval()
    x = torch.randn(batch, in_channels, size, size)
    res = graphopt.optimize(model, example_inputs=(x,))
    expected = outputs(model, x)
    torch.testing.assert_close(outputs(res.model, x), expected, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in res.model.modules())
    scale = max(float(expected.abs().max()), 1.0)
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, runner in ((".onnx", OnnxRunner), (".pt", TorchScriptRunner)):
            (got,) = runner(res.export(Path(tmp) / f"m{suffix}")).run(x)
            torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-4 * scale)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
    width=st.integers(2, 12),
    ratio=st.floats(0.05, 0.95),
    importance=st.sampled_from(["l1", "l2", "bn_scale", "random"]),
    scope=st.sampled_from(["local", "global"]),
    round_to=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
# Found by hypothesis: the concat's second branch ranked lowest in a group coupled by the residual, and its
# conv lost every output channel.
@example(blocks=["conv_bn", "concat", "residual"], width=2, ratio=0.75, importance="l1", scope="local",
         round_to=1, seed=0)  # fmt: skip
def test_random_networks_prune_exactly(blocks, width, ratio, importance, scope, round_to, seed):
    """Whatever the graph and the selection, zeroing the removed channels and cutting them agree."""
    torch.manual_seed(seed)
    model = RandomNet(blocks, width, in_channels=3, classes=5)
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 8, 8)
    gm = capture(model.eval()).gm
    propagate_shapes(gm, (x,))
    graph = analyze(gm)
    config = PruneConfig(ratio=ratio, importance=importance, scope=scope, round_to=round_to, seed=seed)
    selection = choose(graph.groups(), unit_scores(graph, config), config)
    zero_units(graph, selection.removed)
    dense = outputs(gm, x)
    remove_units(graph, selection.removed)
    torch.testing.assert_close(outputs(gm, x), dense, rtol=1e-5, atol=1e-5)
    widths = [m.out_channels for m in gm.modules() if isinstance(m, nn.Conv2d)]
    assert all(w >= 1 for w in widths)
