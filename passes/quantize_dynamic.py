"""Dynamic int8 for Linear layers: s8 per-channel weights, activations quantized per call.

Every ``nn.Linear`` called once becomes a :class:`~graphopt.quant.dynamic.DynamicInt8Linear` (see that
module for the arithmetic and the ONNX form ONNX Runtime fuses into ``DynamicQuantizeMatMul``), and every
``nn.Embedding`` (with ``embeddings=True``) an :class:`~graphopt.quant.dynamic.Int8Embedding`, weight-only
int8: the table is most of a small transformer's file and a lookup costs the same. No
calibration: each call quantizes its own input from its range, which is what transformers' activation
outliers need. Skipped, counted in ``stats``: ``kept_fp32:shared_module`` (one Linear called at several
sites). The report's ``int8`` table lists every layer with its weight SQNR.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.fx as fx
from torch import nn

from graphopt.ir.graph import call_sites, module_of, set_module
from graphopt.pipeline.pass_base import Pass, PassResult
from graphopt.quant.dynamic import DynamicInt8Linear, Int8Embedding
from graphopt.quant.fallback import fall_back
from graphopt.quant.options import QuantizeDynamicOptions
from graphopt.reporting.numerics import first_output

_KINDS = {nn.Linear: "linear", nn.Embedding: "embedding"}
_DESCRIPTIONS = {
    "linear": "Linear weight int8, dynamic u8 activations",
    "embedding": "Embedding weight-only int8, per-row scale",
}


class QuantizeDynamic(Pass):
    name = "quantize_dynamic"
    slot = "int8"
    description = (
        "Linear layers to s8 per-channel weights with per-call u8 activations (ORT DynamicQuantizeMatMul)."
    )
    exact = False
    Options = QuantizeDynamicOptions

    def call(self, gm: fx.GraphModule) -> PassResult:
        batches = self._batches()
        with torch.no_grad():
            reference = [first_output(gm(*inputs)) for inputs in batches] if self.options.min_cosine else []
        stats: Counter[str] = Counter()
        sites = call_sites(gm)
        table = []
        originals: dict[str, nn.Module] = {}
        for node in list(gm.graph.nodes):
            layer = module_of(gm, node)
            kind = _KINDS.get(type(layer)) if layer is not None else None
            if kind is None or (kind == "embedding" and not self.options.embeddings):
                continue
            if sites[str(node.target)] > 1:
                stats["kept_fp32:shared_module"] += 1
                continue
            if kind == "linear":
                quantized: nn.Module = DynamicInt8Linear(
                    layer, reduce_range=self.options.reduce_range, per_token=self.options.per_token
                )
                originals[str(node.target)] = layer
                stats["int8_layers"] += 1
            else:
                quantized = Int8Embedding(layer)
                stats["int8_embeddings"] += 1
            set_module(gm, str(node.target), quantized)
            table.append({"name": str(node.target), "kind": _DESCRIPTIONS[kind],
                          "sqnr_db": round(quantized.weight_sqnr_db, 1)})  # fmt: skip
        if self.options.min_cosine is not None and originals:
            limit = math.ceil(self.options.max_fallback * len(originals))
            result = fall_back(gm, originals, batches, reference, self.options.min_cosine, limit)
            kept = dict(result.kept_fp32)
            for row in table:
                if row["name"] in kept:
                    row["kind"] = f"Linear kept fp32 (worst cosine {kept[row['name']]:.4f} with it back)"
            stats["int8_layers"] -= len(kept)
            stats["kept_fp32:sensitive"] = len(kept)
            stats["worst_cosine"] = round(result.after, 5)
        if table:
            self.context.tables["int8"] = table
        return PassResult(gm, modified=bool(table), stats=dict(stats))

    def _batches(self) -> list[tuple[torch.Tensor, ...]]:
        """calibration_data's batches when given (read only when the fall-back needs data)."""
        if self.options.min_cosine is None:
            return []
        data = self.context.calibration_data
        if data is None:
            return [self.context.example_inputs]
        return list(data)  # read and checked once, by the driver
