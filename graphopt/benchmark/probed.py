"""A labelled task at 224x224 with nothing downloaded: a reference architecture on digits.

The published ImageNet weights cannot be fetched here, so the network keeps its random convolutions; its
BatchNorm statistics are re-estimated on the digits images (upsampled to 224x224, grey repeated on 3
channels) and its classifier is retrained as a linear probe on the pooled features. Random convolutional
features separate digits well enough for a probe (measured accuracy in the bench result), and the network
computes exactly what the reference architecture computes: the same ops, MACs and latency, now with labels,
so accuracy can be measured and exit heads trained.

The probe is fitted on standardised features (mean ``mu``, std ``sigma`` per feature) and folded back into
the classifier: ``W' = W / sigma``, ``b' = b - W' mu``, so the architecture is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.data.digits import DigitsSplit, load_digits_split, upsampled
from graphopt.errors import ConfigError
from graphopt.recovery.batchnorm import reestimate_batchnorm
from graphopt.reporting.progress import Progress
from graphopt.zoo.mobilenet import mobilenet_v2
from graphopt.zoo.resnet import resnet18

ARCHITECTURES = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}
BATCH = 32


def digits_rgb(size: int = 224) -> DigitsSplit:
    """The digits split upsampled to ``size x size``, the grey channel repeated on 3 (RGB-shaped input)."""
    grey = upsampled(load_digits_split(), size)
    return DigitsSplit(
        grey.train_x.expand(-1, 3, -1, -1).contiguous(),
        grey.train_y,
        grey.test_x.expand(-1, 3, -1, -1).contiguous(),
        grey.test_y,
    )


def probed_model(architecture: str, data: DigitsSplit, *, seed: int = 0, quiet: bool = False) -> nn.Module:
    """``architecture`` with random convolutions, BatchNorm statistics of ``data`` and a linear probe on
    ``data``'s training split as its classifier (10 classes)."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"no probed model for {architecture!r}; known: {sorted(ARCHITECTURES)}")
    torch.manual_seed(seed)
    model = ARCHITECTURES[architecture](num_classes=10)
    reestimate_batchnorm(model, [data.train_x[i : i + BATCH] for i in range(0, 8 * BATCH, BATCH)])
    model.eval()
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    features = _classifier_inputs(model, classifier, data.train_x, quiet)
    _fit_probe(classifier, features, data.train_y, seed)
    return model


def _classifier_inputs(model: nn.Module, classifier: nn.Linear, images: Tensor, quiet: bool) -> Tensor:
    captured: list[Tensor] = []
    hook = classifier.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    progress = Progress(-(-len(images) // BATCH), "probe features", quiet=quiet)
    try:
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                model(images[start : start + BATCH])
                progress.update()
    finally:
        hook.remove()
    return torch.cat(captured)


def _fit_probe(classifier: nn.Linear, features: Tensor, labels: Tensor, seed: int, steps: int = 500) -> None:
    """Multinomial logistic regression (AdamW, full batch, weight decay) on standardised features, folded
    into ``classifier``."""
    mu, sigma = features.mean(0), features.std(0).clamp_min(1e-6)
    z = (features - mu) / sigma
    torch.manual_seed(seed)
    probe = nn.Linear(z.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(probe(z), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        weight = probe.weight / sigma
        classifier.weight.copy_(weight)
        classifier.bias.copy_(probe.bias - weight @ mu)
