"""Training the exit heads with the backbone frozen, and optionally backbone and heads together.

The backbone does not change, so its features at every cut and its final logits are computed once (no
gradients) and cached, for the training inputs and for augmented copies of them; each epoch then only runs
the heads. Loss per head ``k``:
``alpha * CE(head_k, labels) + (1 - alpha) * tau^2 * KL(final || head_k)``, summed over heads: every head
learns the labels and the final classifier's soft output (Hinton et al., 2015; the recovery engine's loss).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from graphopt.data.labelled import LabelledTensors
from graphopt.early_exit.config import EarlyExitConfig
from graphopt.early_exit.network import EarlyExitNetwork
from graphopt.ir.graph import deep_copy
from graphopt.recovery.losses import distillation_loss
from graphopt.reporting.progress import Progress


@torch.no_grad()
def cached_features(
    network: EarlyExitNetwork, data: LabelledTensors, batch_size: int = 256
) -> list[torch.Tensor]:
    """Features at every cut, then the final logits, for all of ``data`` (in order)."""
    parts: list[list[torch.Tensor]] = []
    for inputs, _ in data.batches(batch_size):
        features = network.segments[0](*inputs)
        row = [features]
        for segment in list(network.segments)[1:]:
            features = segment(features)
            row.append(features)
        parts.append(row)
    return [torch.cat(column) for column in zip(*parts, strict=True)]


def with_augmented_copies(data: LabelledTensors, config: EarlyExitConfig) -> LabelledTensors:
    """``data`` followed by ``config.augment_copies`` copies whose first input went through
    ``config.augment`` (``data`` itself without ``augment``)."""
    if config.augment is None or config.augment_copies == 0:
        return data
    generator = torch.Generator().manual_seed(config.seed)
    first, rest = data.inputs[0], data.inputs[1:]
    copies = [first, *(config.augment(first, generator) for _ in range(config.augment_copies))]
    repeats = len(copies)
    inputs = (torch.cat(copies), *(x.repeat(repeats, *[1] * (x.dim() - 1)) for x in rest))
    return LabelledTensors(inputs, data.labels.repeat(repeats))


def within_cache_budget(
    network: EarlyExitNetwork, data: LabelledTensors, config: EarlyExitConfig
) -> LabelledTensors:
    """A seeded random subset of ``data`` whose cached features fit ``config.cache_bytes`` (all of it when
    they fit). Fashion-MNIST's 55,000 images and 3 shifted copies cached at two cuts of a 28x28 ResNet
    took 20 GB."""
    sample = cached_features(network, data.subset(torch.arange(1)))
    per_sample = sum(t.element_size() * t.numel() for t in sample)
    fits = max(config.batch_size, config.cache_bytes // per_sample)
    if len(data) <= fits:
        return data
    generator = torch.Generator().manual_seed(config.seed)
    return data.subset(torch.randperm(len(data), generator=generator)[:fits])


def train_heads(
    network: EarlyExitNetwork, data: LabelledTensors, config: EarlyExitConfig
) -> dict[str, float]:
    available = with_augmented_copies(data, config)
    data = within_cache_budget(network, available, config)
    cache = cached_features(network, data)
    features, final = cache[:-1], cache[-1]
    heads = network.heads
    step = _one_cycle(heads, config.lr, config.epochs, len(data), config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    progress = Progress(config.epochs, "train exit heads", quiet=config.quiet)
    heads.train()
    loss_value = 0.0
    for _ in range(config.epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = sum(
                distillation_loss(head(f[idx]), final[idx], data.labels[idx], config.distill)
                for head, f in zip(heads, features, strict=True)
            )
            loss_value = step(loss)
        progress.update(loss=loss_value)
    heads.eval()
    return {"head_epochs": config.epochs, "head_samples": len(data), "head_samples_available": len(available),
            "head_final_loss": round(loss_value, 4)}  # fmt: skip


def fine_tune_jointly(
    network: EarlyExitNetwork, data: LabelledTensors, config: EarlyExitConfig
) -> dict[str, float]:
    """Train backbone and heads together; every exit (the final one too) is distilled from the network as
    it was before (a frozen copy), on the same possibly augmented inputs."""
    teacher = deep_copy(network).eval()
    step = _one_cycle(network, config.joint_lr, config.joint_epochs, len(data), config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    progress = Progress(config.joint_epochs, "fine-tune backbone and exits", quiet=config.quiet)
    network.train()
    loss_value = 0.0
    try:
        for _ in range(config.joint_epochs):
            for inputs, labels in data.batches(config.batch_size, generator):
                if config.augment is not None:
                    inputs = (config.augment(inputs[0], generator), *inputs[1:])
                with torch.no_grad():
                    target = teacher.forced_exit(len(teacher.heads), *inputs)
                loss = sum(
                    distillation_loss(logits, target, labels, config.distill)
                    for logits in network.all_exits(*inputs)
                )
                loss_value = step(loss)
            progress.update(loss=loss_value)
    finally:
        network.eval()
    return {"joint_epochs": config.joint_epochs, "joint_final_loss": round(loss_value, 4)}


def _one_cycle(
    module: torch.nn.Module, lr: float, epochs: int, samples: int, batch_size: int
) -> Callable[[torch.Tensor], float]:
    """An optimizer step for ``module``'s parameters: AdamW on a one-cycle schedule over ``epochs`` passes
    of ``samples`` in batches of ``batch_size``. Returns the loss value."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * -(-samples // batch_size)
    )

    def step(loss: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        return loss.item()

    return step
