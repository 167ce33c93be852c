"""The network with exits: segments of the backbone, a head after each cut, and the branch between them.

``forward`` runs segment 0, scores head 0, and branches: if the batch is confident enough it returns head
0's logits, else it runs segment 1, head 1, and so on; the last segment is the original classifier. Under
export the branch is ``torch.cond``, which lowers to ONNX ``If``; eagerly it is the same branch in Python.
Either way the skipped segments are not computed.

Confidence of logits ``z`` (softmax ``p``): ``max_prob = max_c p_c``, or ``-entropy = sum_c p_c log p_c``
(higher is more confident, so one threshold rule serves both). A sample exits at head ``k`` when its
confidence is at least ``thresholds[k]``.

Batches (documented rule): the whole batch takes one path, and it exits at head ``k`` only when *every*
sample is confident enough there (the minimum confidence passes). For batch 1 this is the per-sample rule;
for larger batches it is conservative: a batch never exits earlier than its least confident sample would.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.fx as fx
from torch import Tensor, nn

Criterion = Literal["max_prob", "entropy"]


def confidence(logits: Tensor, criterion: str) -> Tensor:
    """Per-sample confidence, higher is surer: max softmax probability, or negative entropy."""
    if criterion == "entropy":
        log_p = torch.log_softmax(logits, dim=-1)
        return (log_p.exp() * log_p).sum(-1)
    return torch.softmax(logits, dim=-1).amax(-1)


def exit_head(channels: int, classes: int, kind: str) -> nn.Module:
    """A head shaped like the classifier: global average pooling and a linear layer (``linear``); a 3x3
    conv + ReLU before them (``conv``); or average pooling to 4x4 and a linear layer over all 16 cells
    (``spatial``: early features still say *where* things are, which a global average throws away, for
    ``16 * C * classes`` MACs)."""
    layers: list[nn.Module] = []
    if kind == "conv":
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
    cells = 16 if kind == "spatial" else 1
    layers += [
        nn.AdaptiveAvgPool2d(4 if kind == "spatial" else 1),
        nn.Flatten(),
        nn.Linear(channels * cells, classes),
    ]
    return nn.Sequential(*layers)


class EarlyExitNetwork(nn.Module):
    """Backbone ``segments`` (one more than ``heads``) and the per-exit confidence ``thresholds``."""

    def __init__(self, segments: list[fx.GraphModule], heads: list[nn.Module], criterion: Criterion):
        super().__init__()
        if len(segments) != len(heads) + 1:
            raise ValueError(f"{len(segments)} segments need {len(segments) - 1} heads, got {len(heads)}")
        self.segments = nn.ModuleList(segments)
        self.heads = nn.ModuleList(heads)
        self.criterion = criterion
        # +inf: never exit until thresholds are calibrated
        self.register_buffer("thresholds", torch.full((len(heads),), float("inf")))

    def forward(self, *inputs: Tensor) -> Tensor:
        return self._from(0, self.segments[0](*inputs))

    def _from(self, k: int, features: Tensor) -> Tensor:
        """The output given the features at cut ``k`` (``k == len(heads)``: the final logits)."""
        if k == len(self.heads):
            return features
        logits = self.heads[k](features)
        confident = confidence(logits, self.criterion).min() >= self.thresholds[k]

        def leave(f: Tensor, z: Tensor) -> Tensor:
            return z.clone()

        def go_on(f: Tensor, z: Tensor) -> Tensor:
            return self._from(k + 1, self.segments[k + 1](f))

        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return torch.cond(confident, leave, go_on, (features, logits))  # lowers to ONNX If
        # Eagerly the same branch in Python: hooks (MAC counting, feature taps) cannot run inside torch.cond.
        return leave(features, logits) if bool(confident) else go_on(features, logits)

    def all_exits(self, *inputs: Tensor) -> list[Tensor]:
        """Logits of every head and of the final classifier, computing the whole backbone once."""
        features = self.segments[0](*inputs)
        outputs = []
        for k, head in enumerate(self.heads):
            outputs.append(head(features))
            features = self.segments[k + 1](features)
        return [*outputs, features]

    def forced_exit(self, k: int, *inputs: Tensor) -> Tensor:
        """Head ``k``'s logits alone (``k == len(heads)``: the network without exits)."""
        features = self.segments[0](*inputs)
        for j in range(k):
            features = self.segments[j + 1](features)
        return features if k == len(self.heads) else self.heads[k](features)


class ScriptableEarlyExit(nn.Module):
    """The same network with the branch as a Python ``if`` TorchScript can compile (``torch.cond`` cannot be
    scripted, and tracing would bake one path in)."""

    def __init__(self, network: EarlyExitNetwork):
        super().__init__()
        self.segments = nn.ModuleList(list(network.segments)[:-1])
        self.final = network.segments[-1]
        self.heads = network.heads
        self.entropy = network.criterion == "entropy"
        self.register_buffer("thresholds", network.thresholds.clone())

    def forward(self, x: Tensor) -> Tensor:
        features = x
        k = 0
        # TorchScript compiles zip over ModuleLists but neither zip(strict=) nor enumerate over a zip
        for segment, head in zip(self.segments, self.heads):  # noqa: B905
            features = segment(features)
            logits = head(features)
            log_p = torch.log_softmax(logits, dim=-1)
            score = (log_p.exp() * log_p).sum(-1) if self.entropy else log_p.exp().amax(-1)
            if bool(score.min() >= self.thresholds[k]):
                return logits
            k += 1  # noqa: SIM113
        return self.final(features)
