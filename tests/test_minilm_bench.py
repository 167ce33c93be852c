"""``graphopt bench minilm``'s pieces that run without the model: the Lee corpus and its score, and the
refusals with the install command."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from graphopt.cli import main
from graphopt.errors import ConfigError
from graphopt.zoo.lee import embed_all, lee_corpus, lee_score, padded_batch_cosine


def test_the_score_is_spearman_against_the_ratings_and_the_worst_document_cosine():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(6, 8))
    ratings = reference @ reference.T  # an encoder that agrees with the raters up to scale: rho = 1
    norms = np.linalg.norm(reference, axis=1)
    ratings = ratings / np.outer(norms, norms)
    perfect = lee_score(reference * 3.0, reference, ratings)
    assert perfect.spearman == pytest.approx(1.0) and perfect.worst_cosine == pytest.approx(1.0)
    moved = reference.copy()
    moved[2] = rng.normal(size=8)  # one document's embedding replaced
    score = lee_score(moved, reference, ratings)
    cosine = moved[2] @ reference[2] / np.linalg.norm(moved[2]) / norms[2]
    assert score.worst_cosine == pytest.approx(cosine) and score.spearman < 1.0
    assert score.mean_cosine == pytest.approx((5 + cosine) / 6)


def test_the_padded_batch_cosine_compares_each_document_batched_and_alone():
    """A mean-pooling encoder that ignores padding scores 1; one whose output depends on its batch mates
    (a shared scale, as per-call int8) scores below."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 4))
    documents = [(rng.integers(1, 50, size=(1, n)), np.ones((1, n), dtype=np.int64)) for n in (3, 7, 5, 9, 4)]

    def pooled(ids, mask):
        return (table[ids] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)

    def batch_scaled(ids, mask):
        out = pooled(ids, mask)
        return np.round(out / np.abs(out).max() * 3)  # 3 levels shared by the whole batch

    alone = embed_all(pooled, documents)
    assert padded_batch_cosine(pooled, documents, alone, batch=2) == pytest.approx(1.0)
    assert padded_batch_cosine(batch_scaled, documents, alone, batch=2) < 0.99


def test_the_lee_corpus_is_read_from_the_gensim_wheel():
    pytest.importorskip("gensim")
    corpus = lee_corpus()
    assert len(corpus.documents) == 50 and corpus.ratings.shape == (50, 50)
    upper = corpus.ratings[np.triu_indices(50, 1)]  # the file rates each pair once, above the diagonal
    assert np.all((upper >= 0) & (upper <= 1)) and upper.std() > 0.05 and np.all(np.diag(corpus.ratings) == 1)


def test_without_gensim_the_corpus_is_refused_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="pip install gensim"):
        lee_corpus()


@pytest.mark.parametrize(
    "pipeline", ["x86-int8", "x86-dynamic-int8", "x86-dynamic-int8+prune=0.3+early-exit"]
)
def test_bench_minilm_takes_only_pruned_dynamic_int8_pipelines(pipeline, capsys):
    assert main(["bench", "minilm", "-t", pipeline]) == 2
    err = capsys.readouterr().err
    assert "plus pruned ones as -t TARGET+prune=R" in err and "x86-dynamic-int8-per-token" in err


def test_a_pruned_row_may_end_in_either_dynamic_int8_target():
    from graphopt.benchmark.cli import _minilm_pruned_row
    from graphopt.benchmark.minilm import PrunedRow

    assert _minilm_pruned_row("x86-dynamic-int8+prune=0.3") == PrunedRow(0.3)
    row = _minilm_pruned_row("x86-dynamic-int8-per-token+prune=0.5")
    assert row == PrunedRow(0.5, "x86-dynamic-int8-per-token")
    assert row.label == "x86-dynamic-int8-per-token+prune=0.5"


def test_the_pruned_rows_train_on_the_background_corpus_padded_not_on_the_rated_documents():
    pytest.importorskip("gensim")
    from graphopt.benchmark.minilm import MinilmBenchConfig, PrunedRow, padded_batches
    from graphopt.zoo.lee import lee_background

    background, rated = lee_background(), lee_corpus().documents
    assert len(background) == 300 and not set(background) & set(rated)
    tokens = [(np.array([[101, 7, 102]]), np.ones((1, 3), dtype=np.int64))] * 3
    (ids, mask), (tail_ids, _) = padded_batches(tokens, 2, 8)
    assert ids.shape == (2, 8) and mask[:, :3].all() and not mask[:, 3:].any() and len(tail_ids) == 1
    with pytest.raises(ConfigError, match="prune ratios must be in"):
        MinilmBenchConfig(pruned=(PrunedRow(1.0),))
    with pytest.raises(ConfigError, match="a pruned row ends in one of"):
        PrunedRow(0.5, "x86-int8")
