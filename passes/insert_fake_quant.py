"""Insert int8 quantization into the IR, annotate-then-insert.

1. Annotate: :func:`graphopt.quant.policy.plan_int8` marks the conv/linear layers that get int8 weights and
   the tensors that get an activation quantizer (so ONNX Runtime can fuse whole networks into integer
   kernels).
2. Insert, one generic rewrite: an :class:`~graphopt.quant.ActivationQuantizer` after every marked tensor,
   and every marked layer wrapped in a :class:`~graphopt.quant.QuantizedLayer`.

Until ``calibrate`` runs, the quantizers pass values through and the layers still compute in fp32, so this
pass on its own preserves outputs exactly (the PassManager checks that). ``calibrate`` makes it lossy.
Layers the policy cannot quantize are counted as ``kept_fp32:<reason>`` in ``stats``. With
``InsertFakeQuantOptions.attention`` (``arm-int8``), attention calls are first written out as two products and
a softmax (:mod:`graphopt.quant.attention`) and the products' inputs quantized (``int8_activation_products``).
"""

from __future__ import annotations

import torch.fx as fx

from graphopt.errors import ConfigError
from graphopt.ir.graph import module_of, set_module
from graphopt.ir.shapes import propagate_shapes
from graphopt.pipeline.pass_base import Pass, PassResult
from graphopt.quant.attention import decompose_attention
from graphopt.quant.groups import PER_CHANNEL_FALLBACK, scheme_for_layer
from graphopt.quant.modules import ActivationQuantizer, QuantizedLayer
from graphopt.quant.options import InsertFakeQuantOptions
from graphopt.quant.policy import plan_int8


class InsertFakeQuant(Pass):
    name = "insert_fake_quant"
    slot = "int8"
    description = "Mark and insert int8 quantization (activation quantizers, int8-weight layers)."
    exact = True  # observers pass values through until `calibrate` freezes them
    Options = InsertFakeQuantOptions

    def requires(self, gm: fx.GraphModule) -> None:
        """int8 scales and the fused kernels start from float32 weights and activations."""
        dtypes = sorted({str(p.dtype) for p in gm.parameters() if p.is_floating_point()} - {"torch.float32"})
        if dtypes:
            raise ConfigError(
                f"int8 quantization starts from a float32 model; this one has {', '.join(dtypes)} weights: "
                "optimize model.float() with float32 example inputs"
            )

    def call(self, gm: fx.GraphModule) -> PassResult:
        if any(isinstance(m, (ActivationQuantizer, QuantizedLayer)) for m in gm.modules()):
            return PassResult(gm, modified=False, stats={"skipped:already_quantized": 1})
        written = left = 0
        if self.options.attention:
            written, left = decompose_attention(gm)
            if written:
                propagate_shapes(gm, self.context.example_inputs)  # the new nodes' dtypes, for the plan
        plan = plan_int8(gm, products=self.options.attention)
        if not plan.layers:
            raise ConfigError(_nothing_to_quantize(plan.skipped))
        scheme, observer = self.options.scheme, self.options.observer
        last_placeholder = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
        for i, node in enumerate(plan.tensors):
            name = f"{node.name}_quant"
            gm.add_submodule(name, ActivationQuantizer(scheme, observer, seed=i))
            where = last_placeholder if node.op == "placeholder" else node
            with gm.graph.inserting_after(where):
                quantized = gm.graph.call_module(name, (node,))
            node.replace_all_uses_with(quantized, delete_user_cb=lambda user, q=quantized: user is not q)
        schemes = self.options.layer_schemes(str(node.target) for node in plan.layers)
        fallback = 0
        for node in plan.layers:
            name, layer = str(node.target), module_of(gm, node)
            scheme = scheme_for_layer(layer, schemes[name], name)
            fallback += scheme.group_size != schemes[name].group_size
            set_module(gm, name, QuantizedLayer(layer, scheme))
        stats = {"activation_quantizers": len(plan.tensors), "int8_layers": len(plan.layers), **plan.skipped}
        if fallback:  # per-group scales asked, these layers keep per-channel ones (graphopt.quant.groups)
            stats[PER_CHANNEL_FALLBACK] = fallback
        if self.options.attention:
            stats["int8_activation_products"] = plan.products
            if left:
                stats["kept_fp32:attention_causal_dropout_or_gqa"] = left
        return PassResult(gm, modified=bool(plan.tensors or plan.layers), stats=stats)


def _nothing_to_quantize(kept: dict[str, int]) -> str:
    """Why an int8 target found no layer: said loudly, since an int8 artifact of a fp32 model misleads."""
    reasons = ", ".join(f"{k.removeprefix('kept_fp32:')} x{v}" for k, v in kept.items()) or "none found"
    hint = (
        "; this is an ATen graph (a model loaded from .pt2?): optimize the original nn.Module"
        if "kept_fp32:aten_function" in kept
        else ""
    )
    return (
        f"no conv or linear layer can get int8 weights (layers kept fp32: {reasons}){hint}; use an fp32 "
        "target such as generic-fp32"
    )
