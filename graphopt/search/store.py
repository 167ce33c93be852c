"""Measured candidates kept on disk (``SearchConfig(cache_dir=...)``), so a rerun or a wider search from the
command line measures only what it has not measured before.

A candidate is stored under the SHA-256 of everything its measurement depends on:

    scope (model weights, data, target) | backend | scoring-data digest | repr of every pass of its plan

(pass options carry the seeds, epochs, ratios and budgets), as ``<key>.json`` (the measurement, plain
JSON: nothing in the folder is ever executed or unpickled) and ``<key><suffix>`` (the artifact, for timing
it again beside the others). When a stored candidate is the one returned, its plan runs again to rebuild
the result (optimize is deterministic given its options) and the artifact is checked to be the same file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from graphopt.errors import ConfigError
from graphopt.search.measure import Measured

SCHEMA = 1


class CandidateStore:
    def __init__(self, folder: Path):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"SearchConfig.cache_dir {folder} cannot be created: {exc}") from exc
        self.folder = folder

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    def load(self, key: str) -> tuple[Measured, float | None, float | None] | None:
        """The stored measurement and its validation and test drops, or None (absent, or unreadable)."""
        path = self.folder / f"{key}.json"
        try:
            entry = json.loads(path.read_text())
            if entry.get("schema") != SCHEMA:
                return None
            fields = {f.name for f in dataclasses.fields(Measured)}
            measured = Measured(**{k: v for k, v in entry["measured"].items() if k in fields})
            measured.path = self.folder / Path(str(measured.path)).name
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if not measured.path.is_file():
            return None
        return measured, entry.get("accuracy_drop"), entry.get("test_drop")

    def save(
        self, key: str, measured: Measured, accuracy_drop: float | None, test_drop: float | None
    ) -> None:
        artifact = self.folder / f"{key}{measured.path.suffix}"
        shutil.copyfile(measured.path, artifact)
        stored = dataclasses.replace(measured, path=artifact)
        entry = {"schema": SCHEMA, "measured": {**dataclasses.asdict(stored), "path": artifact.name},
                 "accuracy_drop": accuracy_drop, "test_drop": test_drop}  # fmt: skip
        (self.folder / f"{key}.json").write_text(json.dumps(entry, indent=1))
