"""Reference architectures kept in the repository, so tests and benchmarks need no torchvision or downloads.

:data:`REFERENCE_MODELS` maps a name to a :class:`ModelSpec` (factory and example input shape). The test
sizes are small; ``resnet18`` and ``mobilenet_v2`` are the published networks at 224x224.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from graphopt.errors import UnknownNameError
from graphopt.zoo.blocks import DenseNet, GroupedConvNet, SENet, ShuffleNet, SplitNet
from graphopt.zoo.control_flow import ControlFlowNet, ValueControlFlowNet
from graphopt.zoo.mobilenet import mobilenet_v2, mobilenet_v2_tiny
from graphopt.zoo.resnet import resnet18, resnet_basic_tiny, resnet_bottleneck_tiny
from graphopt.zoo.transformer import MLP, ViT


@dataclass(frozen=True)
class ModelSpec:
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str

    def build(self, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        """A freshly initialised model in eval mode, with randomised BN statistics, and an example input."""
        torch.manual_seed(seed)
        model = self.factory()
        randomize_batchnorm(model)
        return model.eval(), (torch.randn(*self.input_shape),)


def randomize_batchnorm(model: nn.Module) -> None:
    """Give BatchNorm layers non-trivial statistics, as a trained model has; fresh ones are an identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)


REFERENCE_MODELS: dict[str, ModelSpec] = {
    "resnet_basic": ModelSpec(resnet_basic_tiny, (1, 3, 32, 32), "ResNet basic blocks, shared ReLU"),
    "resnet_bottleneck": ModelSpec(resnet_bottleneck_tiny, (1, 3, 32, 32), "ResNet bottleneck blocks"),
    "mobilenet_v2_tiny": ModelSpec(mobilenet_v2_tiny, (1, 3, 32, 32), "inverted residuals, depthwise conv"),
    "senet": ModelSpec(SENet, (1, 3, 32, 32), "squeeze-excitation gates"),
    "densenet": ModelSpec(DenseNet, (1, 3, 32, 32), "DenseNet-style concatenation"),
    "shufflenet": ModelSpec(ShuffleNet, (1, 3, 32, 32), "channel split and channel shuffle"),
    "grouped_conv": ModelSpec(GroupedConvNet, (1, 3, 32, 32), "ResNeXt-style grouped conv"),
    "split": ModelSpec(SplitNet, (1, 3, 32, 32), "torch.split with unequal sizes (mixed convs)"),
    "vit": ModelSpec(ViT, (1, 3, 32, 32), "ViT block, fused qkv split into heads, SDPA"),
    "vit_mha": ModelSpec(lambda: ViT(torch_attention=True), (1, 3, 32, 32), "ViT with nn.MultiheadAttention"),
    "mlp": ModelSpec(MLP, (4, 64), "MLP with BatchNorm1d and dropout"),
    "control_flow": ModelSpec(ControlFlowNet, (1, 3, 32, 32), "shape-dependent control flow in a submodule"),
    "resnet18": ModelSpec(resnet18, (1, 3, 224, 224), "ResNet-18 at 224x224 (1.82 GMACs)"),
    "mobilenet_v2": ModelSpec(mobilenet_v2, (1, 3, 224, 224), "MobileNetV2 at 224x224 (0.30 GMACs)"),
}

#: The small models the test suite runs through every target and backend.
TEST_MODELS = tuple(name for name in REFERENCE_MODELS if name not in ("resnet18", "mobilenet_v2"))


def get_model(name: str) -> ModelSpec:
    if name not in REFERENCE_MODELS:
        raise UnknownNameError("model", name, REFERENCE_MODELS)
    return REFERENCE_MODELS[name]


__all__ = [
    "REFERENCE_MODELS",
    "TEST_MODELS",
    "ModelSpec",
    "ValueControlFlowNet",
    "get_model",
    "randomize_batchnorm",
]
