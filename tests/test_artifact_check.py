"""The artifact check's probes: padded masks beside the example, and a disagreement that names where it was
found and what that points to (issue 42: a padded batch was blamed on control flow the model did not have)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphopt.artifacts.artifact_check import _probe_inputs, check_artifact
from graphopt.data.dims import DynamicDims
from graphopt.errors import ExportError

SEQUENCE = DynamicDims.of({"ids": {1: "seq"}, "mask": {1: "seq"}}, ["ids", "mask"], 2)


class MaskedMean(nn.Module):
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.float()
        return (ids.float() * weights).sum(-1) / weights.sum(-1)


class ReadsMaskAsLengths:
    """A runner that, like ORT's right-padding-only attention, keeps the first ``sum(mask)`` positions."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def run(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = (torch.arange(mask.shape[-1]) < mask.sum(-1, keepdim=True)).long()
        return self.model(ids, lengths)


def _tokens(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(2, 2 + batch * 12).reshape(batch, 12)
    return ids, torch.ones(batch, 12, dtype=torch.long)


def _probes(example: tuple[torch.Tensor, ...]) -> dict[str, tuple[torch.Tensor, ...]]:
    return {probe.where.split(" (")[0]: inputs for probe, inputs in _probe_inputs(example, SEQUENCE)}


def test_masks_get_padded_probes_and_token_ids_do_not():
    ids, mask = _tokens(3)
    probes = _probes((ids, mask))
    right_ids, right = probes["on the example with right padding"]
    _, left = probes["on the example with left padding"]
    assert torch.equal(right_ids, ids)  # not a 0/1 input
    assert right[0].all() and right[2].all() and left[0].all()  # every other row, from row 1
    assert right[1, :9].all() and not right[1, 9:].any()  # a quarter zeroed at the end
    assert left[1, 3:].all() and not left[1, :3].any()  # and at the start
    _, single = _probes(_tokens(1))["on the example with left padding"]
    assert not single[0, 0]  # a batch of one is padded on its only row


def test_a_file_misreading_the_mask_is_named_as_such_not_as_control_flow():
    ids, mask = _tokens(2)
    model = MaskedMean()
    with pytest.raises(
        ExportError, match=r"on the example with left padding .*reads the mask differently"
    ) as error:
        check_artifact(model, ReadsMaskAsLengths(model), "onnx", (ids, mask), SEQUENCE, "x86_64")
    assert "control flow" not in str(error.value).split("):")[0]


def test_a_file_that_agrees_everywhere_passes():
    model = MaskedMean()

    class Faithful:
        def run(self, *inputs: torch.Tensor) -> torch.Tensor:
            return model(*inputs)

    assert check_artifact(model, Faithful(), "onnx", _tokens(2), SEQUENCE, "x86_64") is None
