"""The recovery engine: fine-tune a student against a frozen teacher, keep the best weights, never lose the
model to a diverging run.

    snapshot -> split validation -> [epoch: shuffled batches -> loss -> step -> validate] -> best weights

- Deterministic for a seed: parameters of new adapters, the validation split, shuffling and augmentation
  all draw from generators seeded by ``config.seed``.
- A non-finite loss restores the snapshot taken before the stage and raises :class:`TrainingDivergedError`.
- ``config.train_fn`` replaces the loop with the user's (DDP and friends); graphopt still splits the data,
  builds the loss, validates afterwards, and restores the model if the loop fails.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from graphopt.data.labelled import LabelledTensors, check_label_range, read_labelled, split_validation
from graphopt.errors import ConfigError, TrainingDivergedError, first_line
from graphopt.recovery.config import RecoveryConfig
from graphopt.recovery.losses import RecoveryLoss
from graphopt.recovery.teacher_cache import teacher_logits_once
from graphopt.reporting.numerics import first_output
from graphopt.reporting.progress import Progress

log = logging.getLogger("graphopt.recovery")


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_accuracy: float | None
    lr: float


@dataclass
class RecoveryResult:
    """What a recovery run did. Accuracies are on the validation split (``None`` without one)."""

    epochs_run: int
    steps: int
    seconds: float
    device: str
    accuracy_before: float | None
    best_val_accuracy: float | None
    best_epoch: int | None
    stopped_early: bool
    history: list[EpochRecord] = field(default_factory=list)
    requested_device: str = "cpu"
    #: What the validation scores are: top-1 ``accuracy``, or without labels ``teacher_cosine`` (the mean
    #: per-sample cosine of the student's outputs to the teacher's).
    metric: str = "accuracy"

    def stats(self) -> dict[str, float]:
        stats: dict[str, float] = {"epochs_run": self.epochs_run, "steps": self.steps,
                                   "seconds": round(self.seconds, 2)}  # fmt: skip
        if self.accuracy_before is not None:
            stats[f"val_{self.metric}_before"] = round(self.accuracy_before, 4)
        if self.best_val_accuracy is not None:
            stats[f"best_val_{self.metric}"] = round(self.best_val_accuracy, 4)
            stats["best_epoch"] = self.best_epoch or 0
        if self.stopped_early:
            stats["stopped_early"] = 1
        if self.device != "cpu":
            stats[f"trained_on:{self.device}"] = 1
        elif self.requested_device != "cpu":  # the report says so, not only a log line
            stats[f"unavailable:{self.requested_device}"] = 1
        return stats


@dataclass
class RecoveryJob:
    """What a user's ``train_fn`` receives: train ``student`` in place, minimising :meth:`loss`.

    ``student`` and ``teacher`` are already on ``device``; the teacher is frozen (eval, no grad).
    ``parameters()`` are what the optimizer should update (student plus hint adapters).
    ``batches(epoch, rank, world_size)`` yields this epoch's shuffled training batches (a rank's shard).
    """

    student: nn.Module
    teacher: nn.Module | None
    train: LabelledTensors
    config: RecoveryConfig
    device: torch.device
    loss_module: RecoveryLoss
    epochs_run: int = 0
    #: Sparsity masks (``keep_zero_weights``): each weight tensor with the positions allowed to be non-zero.
    masks: list[tuple[nn.Parameter, Tensor]] = field(default_factory=list)

    def apply_masks(self) -> None:
        """Zero the masked weights again (after an optimizer step moved them)."""
        with torch.no_grad():
            for weight, mask in self.masks:
                weight.mul_(mask)

    def parameters(self) -> list[nn.Parameter]:
        return [*self.student.parameters(), *self.loss_module.trainable()]

    def batches(
        self, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[tuple[Tensor, ...], Tensor]]:
        for _, inputs, labels in self.indexed_batches(epoch, rank, world_size):
            yield inputs, labels

    def indexed_batches(
        self, epoch: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[Tensor, tuple[Tensor, ...], Tensor]]:
        """:meth:`batches`, each with the indices of its samples in ``train``."""
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        per_rank = max(1, self.config.batch_size // world_size)
        shards = self.train.indexed_batches(per_rank, generator, rank=rank, world_size=world_size)
        for index, inputs, labels in shards:
            if self.config.augment is not None:
                inputs = (self.config.augment(inputs[0], generator), *inputs[1:])
            yield index, tuple(self.placed(x) for x in inputs), labels.to(self.device)

    def placed(self, tensor: Tensor) -> Tensor:
        """``tensor`` on the training device, channels-last when the config asks and it is 4-D."""
        tensor = tensor.to(self.device)
        return _channels_last(tensor) if self.config.channels_last else tensor

    def loss(
        self,
        model: nn.Module,
        inputs: tuple[Tensor, ...],
        labels: Tensor,
        teacher_logits: Tensor | None = None,
    ) -> Tensor:
        """The recovery loss of ``model`` (the student, or a DDP wrapper of it) on one batch; the teacher
        runs on ``inputs`` unless its ``teacher_logits`` for them are given."""
        if teacher_logits is None and self.loss_module.uses_teacher and self.teacher is not None:
            with torch.no_grad():
                teacher_logits = _logits(self.teacher(*inputs))
        loss = self.loss_module(_logits(model(*inputs)), teacher_logits, labels)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"the recovery loss became {loss.item()}")
        return loss


def fit(
    student: nn.Module,
    teacher: nn.Module | None,
    train_data: Iterable[Any],
    config: RecoveryConfig,
    *,
    val_data: Iterable[Any] | None = None,
    example_inputs: tuple[Tensor, ...] | None = None,
    desc: str = "recover",
) -> RecoveryResult:
    """Fine-tune ``student`` in place (it ends on the CPU, in eval mode); ``teacher`` is only read.

    The entry for data as a caller holds it (``graphopt.distill``, a script): it is read and checked here
    (:mod:`graphopt.data.labelled`), then trained on with :func:`fit_checked`. Passes get the run's data
    already read and ask the training service, which calls :func:`fit_checked` directly."""
    train = _labelled(train_data, "train_data", example_inputs)
    validation = _labelled(val_data, "val_data", example_inputs) if val_data is not None else None
    sample = tuple(x[:2] for x in train.inputs)
    with torch.no_grad():
        num_classes = _logits(student.eval()(*sample)).shape[-1]
    check_label_range(train.labels, num_classes, "train_data")  # nothing to check without labels
    return fit_checked(student, teacher, train, config, validation=validation, desc=desc)


def fit_checked(
    student: nn.Module,
    teacher: nn.Module | None,
    train: LabelledTensors,
    config: RecoveryConfig,
    *,
    validation: LabelledTensors | None = None,
    desc: str = "recover",
) -> RecoveryResult:
    """:func:`fit` on data already read and checked (the run's :class:`~graphopt.data.run_data.RunData`):
    nothing is read, normalised or checked again. Without ``validation`` a share of ``train`` is held out
    (``config.val_fraction``)."""
    start = time.perf_counter()
    with torch.random.fork_rng():  # seeded for reproducibility without re-seeding the caller's generator
        torch.manual_seed(config.seed)
        return _fit_seeded(student, teacher, train, config, validation, desc, start)


def _fit_seeded(
    student: nn.Module,
    teacher: nn.Module | None,
    data: LabelledTensors,
    config: RecoveryConfig,
    validation: LabelledTensors | None,
    desc: str,
    start: float,
) -> RecoveryResult:
    if validation is not None:  # held out by the caller: all of train_data trains
        train, val = data, validation
    else:
        train, val = split_validation(data, config.val_fraction, config.seed)
    device = resolve_device(config.device)
    sample = tuple(x[:2] for x in data.inputs)
    student.eval()  # the loss below may run it on ``sample`` (hints): no BatchNorm statistics may move
    snapshot = copy.deepcopy(student.state_dict())
    loss_module = RecoveryLoss(
        student, teacher, config.distill, config.hints, sample, labelled=data.has_labels
    )
    student.to(device, memory_format=_memory_format(config, training=True))
    teacher_state = _frozen_for_training(teacher, device)
    loss_module.to(device)
    job = RecoveryJob(student, teacher, train, config, device, loss_module)
    if config.keep_zero_weights:
        job.masks = zero_masks(student)
    try:
        if config.channels_last:
            _check_channels_last(student, sample, device)
        # scored once: the accuracy before the stage, and the score every epoch must beat to be kept
        before = _score(student, val, device, teacher) if val is not None else None
        if config.train_fn is not None:
            config.train_fn(job)
            job.apply_masks()
            result = _after_user_loop(job, val, before[0] if before is not None else None)
        else:
            result = _built_in_loop(job, val, before, desc)
    except BaseException:
        student.load_state_dict(snapshot)  # nothing lost: the model is as it was before the stage
        raise
    finally:
        loss_module.detach_hooks()
        student.to("cpu", memory_format=_memory_format(config, training=False)).eval()
        _restore(teacher, teacher_state)
    result.seconds = time.perf_counter() - start
    result.device, result.requested_device = str(device), config.device
    result.metric = "accuracy" if val is None or val.has_labels else "teacher_cosine"
    log.info("recovery: %s", result.stats())
    return result


def _labelled(data: Iterable[Any], what: str, example_inputs: tuple[Tensor, ...] | None) -> LabelledTensors:
    """``data`` as tensors, read once (data already read is taken as it is)."""
    return data if isinstance(data, LabelledTensors) else read_labelled(data, what, example_inputs)


def _memory_format(config: RecoveryConfig, *, training: bool) -> torch.memory_format:
    """Channels-last while training when asked, and back to the default format afterwards."""
    if not config.channels_last:
        return torch.preserve_format
    return torch.channels_last if training else torch.contiguous_format


def _channels_last(tensor: Tensor) -> Tensor:
    """A 4-D tensor restrided channels-last (even when its strides are ambiguous, as with one channel, so
    that convolutions pick the channels-last kernels); anything else as it is."""
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor


def _check_channels_last(student: nn.Module, sample: tuple[Tensor, ...], device: torch.device) -> None:
    """Refuse ``channels_last`` before training when the channels-last student cannot run (it ran on the
    same sample in the default format just before, so a failure here is the format's)."""
    formatted = tuple(_channels_last(x.to(device)) for x in sample)
    try:
        with torch.no_grad():
            student.eval()(*formatted)
    except RuntimeError as exc:
        raise ConfigError(
            f"RecoveryConfig(channels_last=True), but the model fails on channels-last inputs "
            f"({first_line(exc)}); set channels_last=False (or use reshape instead of view on activations)"
        ) from None


def _frozen_for_training(teacher: nn.Module | None, device: torch.device) -> tuple[bool, list[bool]] | None:
    """Freeze the teacher for the stage (eval, no grad) and return what to restore: the teacher may be the
    caller's own model (``graphopt.distill``), which graphopt never leaves changed."""
    if teacher is None:
        return None
    state = (teacher.training, [p.requires_grad for p in teacher.parameters()])
    teacher.to(device).eval().requires_grad_(False)
    return state


def _restore(teacher: nn.Module | None, state: tuple[bool, list[bool]] | None) -> None:
    if teacher is None or state is None:
        return
    training, flags = state
    teacher.to("cpu").train(training)
    for parameter, flag in zip(teacher.parameters(), flags, strict=True):
        parameter.requires_grad_(flag)


def zero_masks(model: nn.Module) -> list[tuple[nn.Parameter, Tensor]]:
    """For every weight tensor (2-D or more) that has exact zeros: the tensor and its non-zero mask."""
    masks = []
    for name, weight in model.named_parameters():
        if weight.dim() >= 2 and weight.is_floating_point() and name.endswith("weight"):
            mask = (weight.detach() != 0).to(weight.dtype)
            if not bool(mask.all()):
                masks.append((weight, mask))
    return masks


def _built_in_loop(
    job: RecoveryJob, val: LabelledTensors | None, before: tuple[float, float] | None, desc: str
) -> RecoveryResult:
    config = job.config
    optimizer = _optimizer(job.parameters(), config)
    steps_per_epoch = math.ceil(len(job.train) / config.batch_size)
    total_steps = min(config.epochs * steps_per_epoch, config.max_steps or math.inf)
    schedule = _schedule(optimizer, config, int(total_steps))
    best = before
    best_epoch, best_state = 0, copy.deepcopy(job.student.state_dict())
    history: list[EpochRecord] = []
    steps, stale, stopped_early = 0, 0, False
    cached = teacher_logits_once(job, int(total_steps))
    progress = Progress(config.epochs, desc, quiet=config.quiet)
    for epoch in range(1, config.epochs + 1):
        job.student.train()
        total, seen = 0.0, 0
        for index, inputs, labels in job.indexed_batches(epoch):
            loss = job.loss(job.student, inputs, labels, None if cached is None else cached.of(index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            job.apply_masks()
            schedule.step()
            total, seen, steps = total + float(loss.detach()) * len(labels), seen + len(labels), steps + 1
            if steps >= total_steps:
                break
        score = _score(job.student, val, job.device, job.teacher) if val is not None else None
        acc = score[0] if score is not None else None
        history.append(EpochRecord(epoch, total / max(seen, 1), acc, optimizer.param_groups[0]["lr"]))
        shown = "val_acc" if val is None or val.has_labels else "val_cosine"
        progress.update(loss=total / max(seen, 1), **({shown: acc} if acc is not None else {}))
        if score is not None and (best is None or score > best):
            best, best_epoch, best_state, stale = score, epoch, copy.deepcopy(job.student.state_dict()), 0
        else:
            stale += 1
        if steps >= total_steps:
            break
        if val is not None and config.patience is not None and stale >= config.patience:
            stopped_early = True
            break
    if val is not None:
        job.student.load_state_dict(
            best_state
        )  # keep the best epoch (or the starting point, if never beaten)
    best_acc = best[0] if best is not None else None
    before_acc = before[0] if before is not None else None
    return RecoveryResult(
        len(history), steps, 0.0, "", before_acc, best_acc, best_epoch, stopped_early, history
    )


def _after_user_loop(job: RecoveryJob, val: LabelledTensors | None, before: float | None) -> RecoveryResult:
    for name, p in job.student.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise TrainingDivergedError(f"train_fn left non-finite values in {name}")
    acc = _score(job.student, val, job.device, job.teacher)[0] if val is not None else None
    epochs = job.epochs_run or job.config.epochs
    return RecoveryResult(epochs, 0, 0.0, "", before, acc, epochs if acc is not None else None, False)


def evaluate(model: nn.Module, data: LabelledTensors, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` on labelled tensors (eval mode, no grad)."""
    return _score(model, data, device)[0]


def _score(
    model: nn.Module, data: LabelledTensors, device: torch.device, teacher: nn.Module | None = None
) -> tuple[float, float]:
    """``(accuracy, -cross_entropy)`` on validation data: compared as a tuple, accuracy decides and the loss
    breaks ties, which matter on small validation splits where accuracy saturates early. Without labels,
    ``(mean per-sample cosine to the teacher's outputs, -relative squared error to them)``."""
    if not data.has_labels:
        if teacher is None:
            raise ConfigError("validation without labels compares with a teacher, and there is none")
        return _teacher_agreement(model, teacher, data, device)
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for inputs, labels in data.batches(256):
            logits = _logits(model(*(x.to(device) for x in inputs))).cpu()
            correct += int((logits.argmax(-1) == labels).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
    model.train(was_training)
    return correct / len(data), -loss / len(data)


def _teacher_agreement(
    model: nn.Module, teacher: nn.Module, data: LabelledTensors, device: torch.device
) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    cosines, error, energy = [], 0.0, 0.0
    with torch.no_grad():
        for inputs, _ in data.batches(256):
            placed = tuple(x.to(device) for x in inputs)
            got, want = _logits(model(*placed)).flatten(1).cpu(), _logits(teacher(*placed)).flatten(1).cpu()
            cosines.append(torch.nn.functional.cosine_similarity(got, want, dim=1))
            error, energy = error + float((got - want).pow(2).sum()), energy + float(want.pow(2).sum())
    model.train(was_training)
    return float(torch.cat(cosines).mean()), -error / max(energy, 1e-12)


def resolve_device(requested: str) -> torch.device:
    """The requested device, or the CPU (with a log line) when CUDA was asked for but is not available."""
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available: training on the CPU", requested)
        return torch.device("cpu")
    return device


def _logits(output: Any) -> Tensor:
    return first_output(output)


def _optimizer(params: list[nn.Parameter], config: RecoveryConfig) -> torch.optim.Optimizer:
    opt = config.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay)


def _schedule(optimizer: torch.optim.Optimizer, config: RecoveryConfig, total_steps: int) -> Any:
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.optimizer.lr, total_steps=max(total_steps, 2)
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
