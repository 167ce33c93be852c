"""The several-seeds benchmark table: per-seed drops against the same seed's original, mean and worst."""

from __future__ import annotations

import pytest

from graphopt.backends.timing import LatencyStats
from graphopt.benchmark import seeds
from graphopt.benchmark.schema import BenchResult, BenchRow


def _row(pipeline: str, stage: str, kind: str, ms: float, accuracy: float, size: int) -> BenchRow:
    row = BenchRow("m", pipeline, stage, kind, "int8", "onnxruntime", 10, 100, size, accuracy=accuracy)
    row.latency = LatencyStats(ms, ms, ms, ms, 3)
    return row


def _seed(seed: int, original: float, chain: float, extra: bool = True) -> BenchResult:
    rows = [
        _row("peers", "ORT fp32", "peer", 1.0, original, 1000),
        _row("x86-int8+prune=0.5", "artifact:onnx", "artifact", 0.25, chain, 200),
        _row("x86-int8+prune=0.5", "calibrate", "stage", 0.0, chain, 200),  # a stage: not a seeds row
    ]
    if extra:
        rows.append(_row("generic-fp32", "artifact:onnx", "artifact", 0.5, original, 900))
    machine = {"cpu": "x", "arch": "y", "cores": 1, "flags": ["avx2"], "versions": {}}
    return BenchResult("m", "", "now", machine, {"seed": seed}, "synthetic", rows)


def test_drops_are_against_the_same_seeds_original():
    results = [_seed(0, 0.90, 0.89), _seed(1, 0.92, 0.905), _seed(2, 0.91, 0.91, extra=False)]
    rows = seeds.seed_rows(results)
    assert [(r.pipeline, r.stage) for r in rows] == [
        ("peers", "ORT fp32"),
        ("x86-int8+prune=0.5", "artifact:onnx"),
    ]  # generic-fp32 is missing from seed 2, the stage row was never timed
    chain = rows[1]
    assert chain.drop_pp == pytest.approx([1.0, 1.5, 0.0])
    assert chain.mean_accuracy == pytest.approx((89 + 90.5 + 91) / 3)
    assert chain.worst_accuracy == pytest.approx(89.0)
    assert chain.speedup == pytest.approx([4.0] * 3) and chain.file_ratio == pytest.approx([0.2] * 3)
    text = seeds.seeds_markdown(results, rows)
    assert "3 seeds (0, 1, 2)" in text and "flags: avx2" in text
    assert (
        "| x86-int8+prune=0.5 | artifact:onnx | int8 | 0.250 | 4.00x, 4.00x | 0.20x | 90.17 % | 89.00 % "
        in text
    )
    assert "| +0.83 | +1.50 | 89.00 / 90.50 / 91.00 |" in text


def test_exit_models_are_compared_per_image_with_their_twin_without_exits():
    results = [_seed(s, 0.90, 0.89, extra=False) for s in range(2)]
    for result, (mean, twin, vs_original) in zip(results, [(0.2, 0.25, 4.5), (0.3, 0.25, 3.0)], strict=True):
        row = _row("x86-int8+prune=0.5+early-exit", "artifact:onnx", "artifact", 0.5, 0.888, 210)
        row.mean_ms, row.no_exit_mean_ms, row.speedup_vs_ort_fp32 = mean, twin, vs_original
        result.rows.append(row)
    exits = seeds.seed_rows(results)[-1]
    # the run's own per-image ratio, not the original's median call over the exit model's per-image mean
    assert exits.speedup == pytest.approx([4.5, 3.0]) and exits.latency_ms == pytest.approx([0.2, 0.3])
    assert exits.vs_no_exits == pytest.approx([0.8, 1.2])
    assert seeds.seed_rows(results)[1].vs_no_exits == []  # no exits, nothing to compare
    text = seeds.seeds_markdown(results, seeds.seed_rows(results))
    assert "- x86-int8+prune=0.5+early-exit: per test image 1.00x the latency of the same pipeline" in text
    assert "per seed 0.80x / 1.20x" in text


def test_run_seeds_runs_each_seed_into_its_folder_and_writes_the_table(tmp_path, monkeypatch):
    from graphopt.benchmark.pipelines import parse_pipeline
    from graphopt.benchmark.runner import BenchConfig

    ran = []

    def fake_run(config):
        ran.append((config.seed, config.out_dir))
        return _seed(config.seed, 0.9, 0.9 - 0.01 * config.seed)

    monkeypatch.setattr(seeds, "run_bench", fake_run)
    config = BenchConfig(model="m", pipelines=(parse_pipeline("x86-int8"),), out_dir=tmp_path)
    results, rows = seeds.run_seeds(config, [3, 5])
    assert ran == [(3, tmp_path / "seed-3"), (5, tmp_path / "seed-5")]
    assert [r.settings["seed"] for r in results] == [3, 5]
    assert rows[1].drop_pp == pytest.approx([3.0, 5.0])
    assert (tmp_path / "seeds.md").read_text().startswith("**graphopt bench m: 2 seeds (3, 5)**")
    assert (tmp_path / "seeds.png").stat().st_size > 10_000
    assert '"drop_pp"' in (tmp_path / "seeds.json").read_text()


def test_bench_seeds_cli_combines_separate_runs(tmp_path, capsys):
    from graphopt.cli import main

    paths = []
    for seed, chain in ((0, 0.89), (1, 0.90)):
        path = tmp_path / f"seed{seed}.json"
        path.write_text(_seed(seed, 0.9, chain).to_json())
        paths.append(str(path))
    assert main(["bench-seeds", *paths, "--out", str(tmp_path / "out"), "--no-plot"]) == 0
    assert "2 seeds (0, 1)" in capsys.readouterr().out
    assert (tmp_path / "out" / "seeds.md").exists() and not (tmp_path / "out" / "seeds.png").exists()
