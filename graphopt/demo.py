"""The main job on an embedded default: train the digits CNN, optimize it for an edge target, export it, and
print the per-stage table with test accuracy and ONNX Runtime latency.

The default pipeline prunes half of the channels, re-estimates BatchNorm, recovers accuracy by distillation
from the trained model, then quantizes to int8 with quantization-aware training: every stage is a row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from graphopt.api import optimize
from graphopt.artifacts.destination import check_destination
from graphopt.artifacts.result import OptimizeResult
from graphopt.backends.timing import pin_to_one_core
from graphopt.data.digits import (
    DigitsTraining,
    batches,
    load_digits_split,
    random_shift,
    train_digits_cnn,
)
from graphopt.early_exit.config import EarlyExitConfig
from graphopt.errors import ConfigError
from graphopt.pruning.config import PruneConfig
from graphopt.quant import is_quantized
from graphopt.recovery.config import RecoveryConfig
from graphopt.reporting.notes import Note
from graphopt.targets import resolve_target

log = logging.getLogger("graphopt")

#: Note keys (graphopt.reporting.notes) of the demo's run-level notes.
NO_TORCHSCRIPT = "demo:no_torchscript"
LATENCY_BASIS = "demo:latency_basis"


@dataclass(frozen=True)
class DemoConfig:
    target: str = "x86-int8"
    epochs: int = 30
    seed: int = 0
    prune: float = 0.5
    recovery_epochs: int = 20  # for distillation after pruning and for QAT each
    early_exit: bool = False  # an exit after the second conv block (fp32 targets only)
    exit_epochs: int = EarlyExitConfig.epochs  # of the exit head's training, with early_exit
    out_dir: Path = Path("graphopt-demo")
    quiet: bool = False

    def __post_init__(self) -> None:
        """Checked before the 15 s of training, so a typo fails at once."""
        resolve_target(self.target)
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not isinstance(self.exit_epochs, int) or self.exit_epochs < 1:
            raise ConfigError(f"exit_epochs must be an integer >= 1, got {self.exit_epochs!r}")
        if not isinstance(self.recovery_epochs, int) or self.recovery_epochs < 0:
            raise ConfigError(f"recovery_epochs must be an integer >= 0, got {self.recovery_epochs!r}")
        if not 0 <= self.prune < 1:
            raise ConfigError(f"prune must be a fraction in [0, 1), got {self.prune!r}")
        check_destination(self.out_dir / "digits.onnx", "demo output folder")


def run_demo(config: DemoConfig) -> OptimizeResult:
    torch.manual_seed(config.seed)
    data = load_digits_split()  # all of it trains the CNN: exit thresholds calibrate on a held-out share
    model = train_digits_cnn(data, DigitsTraining(epochs=config.epochs, seed=config.seed), quiet=config.quiet)
    # Train on every core; measure like an edge deployment: one pinned core, one thread.
    core = pin_to_one_core()
    torch.set_num_threads(1)
    result = optimize(
        model,
        target=config.target,
        example_inputs=(data.test_x[:1],),
        calibration_data=[data.train_x[i : i + 32] for i in range(0, 320, 32)],
        eval_data=data.test_batches(),
        train_data=batches(data.train_x, data.train_y, 64)
        if config.recovery_epochs or config.early_exit
        else None,
        # The demo shows every stage of the chain on any CPU, int8 and QAT included; the latency guard still
        # picks what ships. A user's call leaves the probe on: where int8 is slower than fp32 after
        # pruning, it skips int8 and QAT and gives their epochs to recovery.
        prune=PruneConfig(config.prune, skip_int8_if_slower=False) if config.prune else 0.0,
        early_exit=EarlyExitConfig(
            exits=("features.6",), epochs=config.exit_epochs, augment=random_shift, quiet=config.quiet
        )
        if config.early_exit
        else None,
        recovery=RecoveryConfig(
            epochs=max(1, config.recovery_epochs), augment=random_shift, seed=config.seed, quiet=config.quiet
        ),
    )
    out = config.out_dir
    result.export(out / "digits.onnx", measure_latency=True)
    if config.early_exit and is_quantized(result.model):
        result.report.notes.append(
            Note(NO_TORCHSCRIPT, "no TorchScript artifact: int8 with early exits exports to ONNX only")
        )
    else:
        result.export(out / "digits.pt", measure_latency=True)
    result.save(out / "digits.pt2")
    where = f"pinned to core {core}" if core is not None else "unpinned"
    text = f"latency: batch 1, one thread, {where}; artifacts in {out}/"
    result.report.notes.append(Note(LATENCY_BASIS, text, core=core, out_dir=str(out)))
    return result
