"""Early exit: exit points on the IR, exit heads, threshold calibration, and the network with the branch.

    find_cuts / choose_cuts ──▶ split_at (segments) ──▶ EarlyExitNetwork(segments, heads, thresholds)
        ──train_heads──▶ time_paths (each path, in the target's runtime) ──▶ choose_exits: calibrate
        every subset of the exits on held-out data, keep the lowest expected latency ──▶ one artifact

The pass that drives it is :class:`graphopt.passes.insert_early_exit.InsertEarlyExit`.
"""

from __future__ import annotations

from graphopt.early_exit.config import EarlyExitConfig
from graphopt.early_exit.network import EarlyExitNetwork, ScriptableEarlyExit, confidence

__all__ = ["EarlyExitConfig", "EarlyExitNetwork", "ScriptableEarlyExit", "confidence"]
