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

from collections import Counter
from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from graphopt.ir import call_sites, module_of, set_module
from graphopt.pass_base import Pass, PassOptions, PassResult
from graphopt.quant.dynamic import DynamicInt8Linear, Int8Embedding

_KINDS = {nn.Linear: "linear", nn.Embedding: "embedding"}
_DESCRIPTIONS = {
    "linear": "Linear weight int8, dynamic u8 activations",
    "embedding": "Embedding weight-only int8, per-row scale",
}


@dataclass(frozen=True)
class QuantizeDynamicOptions(PassOptions):
    #: 7-bit weights, for x86 CPUs without VNNI (int16 pair sums in ORT's u8 x s8 kernel overflow).
    reduce_range: bool = True
    #: Embedding tables weight-only int8 (one scale per row).
    embeddings: bool = True


class QuantizeDynamic(Pass):
    name = "quantize_dynamic"
    description = (
        "Linear layers to s8 per-channel weights with per-call u8 activations (ORT DynamicQuantizeMatMul)."
    )
    exact = False
    Options = QuantizeDynamicOptions

    def call(self, gm: fx.GraphModule) -> PassResult:
        stats: Counter[str] = Counter()
        sites = call_sites(gm)
        table = []
        for node in list(gm.graph.nodes):
            layer = module_of(gm, node)
            kind = _KINDS.get(type(layer)) if layer is not None else None
            if kind is None or (kind == "embedding" and not self.options.embeddings):
                continue
            if sites[str(node.target)] > 1:
                stats["kept_fp32:shared_module"] += 1
                continue
            if kind == "linear":
                quantized: nn.Module = DynamicInt8Linear(layer, reduce_range=self.options.reduce_range)
                stats["int8_layers"] += 1
            else:
                quantized = Int8Embedding(layer)
                stats["int8_embeddings"] += 1
            set_module(gm, str(node.target), quantized)
            table.append({"name": str(node.target), "kind": _DESCRIPTIONS[kind],
                          "sqnr_db": round(quantized.weight_sqnr_db, 1)})  # fmt: skip
        if table:
            self.context.tables["int8"] = table
        return PassResult(gm, modified=bool(table), stats=dict(stats))
