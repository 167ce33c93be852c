"""Recovery under torch.distributed DDP through graphopt's ``train_fn`` hook (gloo, local processes).

graphopt owns no distributed code: it hands ``train_fn`` a RecoveryJob (student, frozen teacher, loss,
sharded batches) and the user's loop wraps the student in DistributedDataParallel. This script trains a
half-width digits student from a digits teacher, either single-process with graphopt's built-in loop or
with ``--world-size N`` processes, with the same global batch and schedule, and writes the test accuracy.

    python examples/ddp_distill.py --world-size 2 --out ddp.json
    python examples/ddp_distill.py --world-size 1 --out single.json

``--teacher teacher.pt`` (a ``DigitsCNN`` state dict) skips training the teacher, e.g. to compare runs with
one teacher.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import graphopt
from graphopt.data.digits import (
    DigitsCNN,
    DigitsTraining,
    batches,
    load_digits_split,
    random_shift,
    train_digits_cnn,
)
from graphopt.recovery import RecoveryJob
from graphopt.reporting.evaluation import accuracy


def ddp_train_fn(job: RecoveryJob) -> None:
    """The user's loop: DDP around the student, one shard of each epoch's batches per rank."""
    rank, world = dist.get_rank(), dist.get_world_size()
    model = DistributedDataParallel(job.student)
    config = job.config
    optimizer = torch.optim.AdamW(
        job.parameters(), lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay
    )
    steps_per_epoch = math.ceil((len(job.train) // world) / (config.batch_size // world))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.optimizer.lr, total_steps=config.epochs * steps_per_epoch
    )
    for epoch in range(1, config.epochs + 1):
        model.train()
        for inputs, labels in job.batches(epoch, rank=rank, world_size=world):
            loss = job.loss(model, inputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    job.epochs_run = config.epochs


def recovery_config(epochs: int, distributed: bool) -> graphopt.RecoveryConfig:
    return graphopt.RecoveryConfig(
        epochs=epochs,
        batch_size=64,  # global batch: each of N ranks takes 64 / N
        optimizer=graphopt.OptimizerConfig(lr=0.01),
        schedule="onecycle",
        augment=random_shift,
        patience=None,
        quiet=True,
        train_fn=ddp_train_fn if distributed else None,
    )


def run(rank: int, world: int, port: int, teacher_path: str, epochs: int, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    data = load_digits_split()
    teacher = DigitsCNN()
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    torch.manual_seed(0)
    student = DigitsCNN(width=16)
    train = batches(data.train_x, data.train_y, 256)
    result = graphopt.distill(teacher, student, train, recovery_config(epochs, distributed=world > 1))
    if rank == 0:
        test_accuracy = accuracy(result.student, data.test_batches())
        Path(out).write_text(json.dumps({"world_size": world, "test_accuracy": test_accuracy,
                                         "val_accuracy": result.recovery.best_val_accuracy}))  # fmt: skip
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--teacher", help="a trained DigitsCNN state dict (default: train one here)")
    parser.add_argument("--out", default="ddp_distill.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = args.teacher or str(Path(tmp) / "teacher.pt")
        if args.teacher is None:
            teacher = train_digits_cnn(
                load_digits_split(), DigitsTraining(epochs=args.teacher_epochs), quiet=True
            )
            torch.save(teacher.state_dict(), teacher_path)
        if args.world_size == 1:
            run(0, 1, 0, teacher_path, args.epochs, args.out)
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(
                run, args=(args.world_size, port, teacher_path, args.epochs, args.out), nprocs=args.world_size
            )
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
