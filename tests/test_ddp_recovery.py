"""Recovery through the train_fn hook under torch.distributed DDP (gloo, 2 local processes) matches the
quality of a single-process run with the same global batch and schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from graphopt.data.labelled import LabelledTensors

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ddp_distill.py"


def _run(world_size: int, teacher: Path, out: Path) -> dict[str, float]:
    budget = ["--epochs", "6", "--teacher", str(teacher)]
    cmd = [sys.executable, str(EXAMPLE), "--world-size", str(world_size), *budget, "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.read_text())


def test_ddp_matches_single_process(tmp_path, digits_model):
    """Both runs distill from one teacher, the suite's trained digits CNN (each run training its own
    teacher cost two trainings and compared students of two teachers)."""
    teacher = tmp_path / "teacher.pt"
    torch.save(digits_model.state_dict(), teacher)
    ddp = _run(2, teacher, tmp_path / "ddp.json")
    single = _run(1, teacher, tmp_path / "single.json")
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert single["test_accuracy"] > 0.95
    # same quality: within 1 pp (under 4 of 360 test images)
    assert abs(ddp["test_accuracy"] - single["test_accuracy"]) <= 0.01


def test_rank_shards_are_disjoint_and_equal_sized():
    data = LabelledTensors((torch.arange(11).float().unsqueeze(1),), torch.arange(11))
    shards = [
        torch.cat([y for _, y in data.batches(2, torch.Generator().manual_seed(0), rank=r, world_size=2)])
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 5
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
