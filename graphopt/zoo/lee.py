"""The Lee corpus: 50 news documents and human ratings of how similar each of their 1,225 pairs is.

It ships inside the ``gensim`` wheel (``gensim/test/test_data``: ``lee.cor`` and ``similarities0-1.txt``);
gensim is never imported, only its data files are read. A sentence encoder's quality on it is the Spearman
correlation between the cosine of two documents' embeddings and the human rating of the pair,

    rho = spearman({cos(e_i, e_j)}_{i<j}, {rating_ij}_{i<j}),

and an int8 encoder's faithfulness is the cosine of each document's embedding to the fp32 one (the worst
document is the number that matters: one bad embedding is one wrong search result).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphopt.errors import ConfigError
from graphopt.reporting.numerics import row_cosines

INSTALL = "pip install gensim  (only its bundled test data is read)"
Encode = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, attention_mask) -> (1, dim)


@dataclass(frozen=True)
class LeeCorpus:
    documents: list[str]
    ratings: np.ndarray  # (50, 50) in [0, 1]: each pair rated once, above the diagonal (zeros below)


@dataclass(frozen=True)
class LeeScore:
    spearman: float
    worst_cosine: float  # the lowest cosine of a document's embedding to the reference's
    mean_cosine: float


def lee_corpus() -> LeeCorpus:
    """The documents and ratings; :class:`ConfigError` with the install command when gensim is absent."""
    folder = _data_folder()
    text = (folder / "lee.cor").read_text(encoding="latin-1")
    documents = [line.strip() for line in text.splitlines() if line.strip()]
    return LeeCorpus(documents, np.loadtxt(folder / "similarities0-1.txt"))


def lee_background() -> list[str]:
    """The 300 documents of the Lee *background* corpus (``lee_background.cor``, the same wheel): news text
    of the same kind as the 50 rated documents and disjoint from them, to train on without labels."""
    text = (_data_folder() / "lee_background.cor").read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _data_folder() -> Path:
    """gensim's bundled test data (gensim is never imported); a ConfigError naming the install when absent."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise ConfigError(f"the Lee corpus ships in the gensim wheel: {INSTALL}")
    return Path(spec.origin).parent / "test" / "test_data"


def embed_all(encode: Encode, tokens: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One embedding per document, each document run alone (batch 1, its own length)."""
    return np.stack([np.asarray(encode(ids, mask))[0] for ids, mask in tokens])


def padded_batch_cosine(
    encode: Encode, tokens: list[tuple[np.ndarray, np.ndarray]], alone: np.ndarray, batch: int = 8
) -> float:
    """The worst cosine, over documents, between a document's embedding in a batch of ``batch`` documents
    right-padded to the longest (as a tokenizer pads a batch) and ``alone``, its embedding run by itself."""
    worst = 1.0
    for start in range(0, len(tokens), batch):
        chunk = tokens[start : start + batch]
        length = max(ids.shape[1] for ids, _ in chunk)
        ids = np.zeros((len(chunk), length), dtype=chunk[0][0].dtype)
        mask = np.zeros((len(chunk), length), dtype=chunk[0][1].dtype)
        for row, (text_ids, text_mask) in enumerate(chunk):
            ids[row, : text_ids.shape[1]], mask[row, : text_mask.shape[1]] = text_ids[0], text_mask[0]
        cosine = row_cosines(np.asarray(encode(ids, mask)), alone[start : start + len(chunk)])
        worst = min(worst, float(cosine.min()))
    return worst


def lee_score(embeddings: np.ndarray, reference: np.ndarray, ratings: np.ndarray) -> LeeScore:
    from scipy.stats import spearmanr

    pairs = np.triu_indices(len(embeddings), 1)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    rho = spearmanr((unit @ unit.T)[pairs], ratings[pairs]).correlation
    cosine = (unit * ref).sum(1)
    return LeeScore(float(rho), float(cosine.min()), float(cosine.mean()))
