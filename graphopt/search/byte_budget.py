"""The weight bytes a mixed-width candidate may spend under a size goal.

With a size goal and both 8 and a narrower width among ``SearchConfig.weight_bits``, the search adds, per
narrow width, a mixed point: ``allocate_weight_bits`` narrows the layers that width hurts least, and only
as many as it takes for the weights to fit a byte budget, so the rest keep 8 bits (the most accurate
file that fits, where uniform narrow weights give away accuracy the goal did not ask for). The goal is on
the whole file, the budget on its weights, so the budget is the goal less an estimate of what the int8
file holds besides the weights:

    overhead = 8 x (output channels of the conv and linear layers)       int32 bias + float scale each
             + GRAPH_SHARE x (fp32 file bytes - 4 x float tensors)        the graph, from the fp32 file's
    budget   = max_bytes - overhead x (1 - r)                             r: the point's prune ratio

``GRAPH_SHARE``: the compact QDQ lowering's graph bytes over the fp32 export's, measured at W4A8 on
resnet_basic (8,507 / 40,594 = 0.21) and mobilenet_v2_tiny (14,300 / 66,964 = 0.21); 0.3 errs on the side
of fitting. The estimate only sets the budget: the candidate's file is measured like every other, and a
file over the goal is a miss in its row.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

#: The int8 file's graph bytes over the fp32 file's (module docstring).
GRAPH_SHARE = 0.3
#: Bytes per output channel besides its weights: an int32 bias and a float32 weight scale.
CHANNEL_BYTES = 8


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def int8_overhead(fp32_file: Path, model: nn.Module) -> int:
    """The estimated bytes of an int8 file of ``model`` besides its weights (module docstring)."""
    floats = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    graph = max(0, fp32_file.stat().st_size - 4 * floats)
    channels = sum(m.weight.shape[0] for m in _layers(model))
    return int(CHANNEL_BYTES * channels + GRAPH_SHARE * graph)


def weight_budget(max_bytes: int, overhead: int, prune: float) -> int:
    """The bytes a mixed point's weights may take (module docstring); <= 0 when the rest alone is over."""
    return int(max_bytes - overhead * (1.0 - prune))
