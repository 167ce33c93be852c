"""The teacher's logits computed once for the whole training set, when every epoch shows it the same inputs.

Distillation needs the frozen teacher's logits ``z_t(x_i)`` for every training batch. Without augmentation an
epoch shows the teacher exactly the samples of the epoch before, so running it every step recomputes the same
``N`` vectors once per epoch. Computed once in eval mode they are looked up by sample index; the loss is the
same function of the same values (up to the float rounding of a different batch size in the teacher's
kernels). Measured on the Fashion ResNet pruned 0.5, distilled from the unpruned network (batch 64, 2 cores,
AVX2): 96 ms per step with the teacher run every step, 77 ms with its logits looked up, 64 ms on labels alone.
The Fashion bench trains with +-1 px shifts, so it runs the teacher every step.

Used only where that holds and pays: a teacher the loss reads, no feature hints (they need the teacher's
activations at every step), no augmentation (inputs differ each epoch), a run that covers the data at least
twice (one pass costs what it saves per epoch), and logits that fit in :data:`MAX_BYTES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from graphopt.reporting.numerics import first_output

if TYPE_CHECKING:
    from graphopt.recovery.engine import RecoveryJob

#: The most memory the cached logits may take (a segmentation teacher's logits per sample can be large).
MAX_BYTES = 256 * 2**20
_BATCH = 256


@dataclass
class CachedTeacher:
    logits: Tensor  # row i: the teacher's logits for sample i of the training split, on the training device

    def of(self, index: Tensor) -> Tensor:
        return self.logits[index.to(self.logits.device)]


def teacher_logits_once(job: RecoveryJob, total_steps: int) -> CachedTeacher | None:
    """The teacher's logits for every training sample, or None where the teacher must run every step."""
    loss, teacher = job.loss_module, job.teacher
    if teacher is None or not loss.uses_teacher or loss.hints or job.config.augment is not None:
        return None
    if total_steps * job.config.batch_size < 2 * len(job.train):
        return None
    chunks: list[Tensor] = []
    with torch.no_grad():
        for _, inputs, _ in job.train.indexed_batches(_BATCH):  # in order: row i is sample i
            logits = first_output(teacher(*(job.placed(x) for x in inputs)))
            if not chunks and logits[0].numel() * logits.element_size() * len(job.train) > MAX_BYTES:
                return None
            chunks.append(logits)
    return CachedTeacher(torch.cat(chunks))
