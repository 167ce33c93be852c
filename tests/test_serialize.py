from __future__ import annotations

import pytest
import torch
from torch import nn

import graphopt
from graphopt import SerializationError
from graphopt.zoo import get_model
from tests.helpers import outputs


def test_round_trip_with_dynamic_batch(tmp_path):
    model, inputs = get_model("resnet_bottleneck").build()
    res = graphopt.optimize(model, example_inputs=inputs)
    path = res.save(tmp_path / "m.pt2")
    loaded = graphopt.load(path)
    torch.testing.assert_close(outputs(loaded, *inputs), outputs(res.model, *inputs), rtol=1e-5, atol=1e-5)
    batch = torch.randn(3, *inputs[0].shape[1:])
    torch.testing.assert_close(outputs(loaded, batch), outputs(model, batch), rtol=1e-5, atol=1e-5)


def _shrink_first_conv(gm: torch.fx.GraphModule, keep: int) -> None:
    """Drop output channels of the first conv and the matching inputs of the next (what pruning does)."""
    convs = [m for m in gm.modules() if isinstance(m, nn.Conv2d)]
    first, second = convs[0], convs[1]
    first.weight = nn.Parameter(first.weight[:keep].clone())
    first.bias = nn.Parameter(first.bias[:keep].clone())
    first.out_channels = keep
    second.weight = nn.Parameter(second.weight[:, :keep].clone())
    second.in_channels = keep


def test_model_whose_shapes_changed_round_trips(tmp_path, digits_model, digits):
    res = graphopt.optimize(digits_model, example_inputs=(digits.test_x[:1],))
    _shrink_first_conv(res.model, keep=20)
    res.model.recompile()
    path = res.save(tmp_path / "pruned.pt2")
    loaded = graphopt.load(path)
    params = dict(loaded.named_parameters())
    assert any(p.shape[0] == 20 for p in params.values())
    x = digits.test_x[:8]
    torch.testing.assert_close(outputs(loaded, x), outputs(res.model, x), rtol=1e-5, atol=1e-5)


def test_load_refuses_foreign_files(tmp_path):
    with pytest.raises(SerializationError, match="no such file"):
        graphopt.load(tmp_path / "missing.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not an archive")
    with pytest.raises(SerializationError, match=r"not a graphopt \.pt2 archive"):
        graphopt.load(junk)
    model, inputs = get_model("mlp").build()
    foreign = tmp_path / "foreign.pt2"
    torch.export.save(torch.export.export(model, inputs), str(foreign))
    with pytest.raises(SerializationError, match=r"not written by OptimizeResult\.save"):
        graphopt.load(foreign)


def test_save_needs_pt2_suffix(tmp_path):
    model, inputs = get_model("mlp").build()
    with pytest.raises(SerializationError, match=r"\.pt2"):
        graphopt.optimize(model, example_inputs=inputs).save(tmp_path / "m.pt")
