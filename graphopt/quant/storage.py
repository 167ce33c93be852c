"""How an artifact stores weights below 8 bits, and how its runtime runs them: the keyed export note.

A layer with ``weight_bits`` b < 8 holds b-bit values (|q| <= 2^(b-1) - 1) in an int8 tensor. Whether the
artifact is smaller depends on the backend:

- ONNX (graphopt's direct lowering): 2..4-bit weights are INT4 initializers, two per byte (opset 21), so a
  4-bit layer's weights take half the bytes of int8. They feed ``Cast(to int8) -> DequantizeLinear``: ONNX
  Runtime 1.32 has no int4 Conv / Gemm kernel, but it folds the Cast of a constant once at load, and the
  ``DQ(int8 constant) -> Conv`` left is fused into QLinearConv / QGemm like any int8 layer (checked on the
  ORT-optimized graph), so the layer runs at int8 speed with exactly the same values. (``DQ(int4)`` read
  directly is never folded: ORT dequantized the weights on every run and computed in float, 6x slower
  than fp32 on the digits CNN.) The latency guard times it against the fp32 artifact, as for int8.
- ONNX, layers with per-group scales (``group_size``, :mod:`graphopt.quant.groups`): INT4 initializers read
  by a blocked DequantizeLinear (opset 21). No int8 kernel takes several scales per output channel, and
  ORT 1.32 keeps ``DQ(blocked int4) -> MatMul / Conv`` as it is behind an int8 activation quantizer (its
  MatMulNBits fusion declines a MatMul whose other input comes from a DequantizeLinear; measured on the
  ORT-optimized graph): the weights are dequantized to float on every run and the layer computes in float
  (a 1024 x 1024 Linear at batch 1, one thread: 1.7 ms vs 0.16 ms fp32; MatMulNBits, where it fires
  without the activation quantizer, 0.03 ms). The file is the small one; the latency guard decides.
- ExecuTorch: 2..4-bit linear layers as XNNPACK 4-bit per-channel weights (qc4w, two per byte), run by
  its fully connected node on int8 activations with the same outputs; convs and 5..7-bit layers in int8
  storage (XNNPACK takes no 4-bit conv weights: what was measured is in backends/xnnpack_int4.py).
- ONNX written by torch.onnx (graphs the direct lowering does not cover), TorchScript, LiteRT and Ethos-U:
  int8 storage of the same values (their int8 kernels take them unchanged: same outputs), so the file is
  no smaller than int8. Why per backend: TorchScript's quantized kernels take qint8 weights only;
  litert_torch's converter writes int8 weights; Vela takes int8 (and compresses weights itself, which
  gains from the fewer distinct values).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from graphopt.quant.modules import QuantizedLayer
from graphopt.reporting.notes import Note

_ONNX_INT4 = 22  # onnx.TensorProto.INT4, without importing onnx for a model that has no ONNX artifact

#: Note key (graphopt.reporting.notes) of the artifact row's note on weights below 8 bits.
WEIGHT_STORAGE = "artifact:weight_storage"

#: How each runtime runs packed int4 weights (only ONNX stores them packed).
_PACKED_RUN = {
    "onnx": "ONNX Runtime unpacks them to int8 once at load (it folds their Cast to int8) and fuses the "
    "layers into QLinearConv / QGemm like int8 ones: int8 kernels, int8 speed",
    "executorch": "XNNPACK runs them as fully connected nodes on 4-bit per-channel (qc4w) weights and int8 "
    "activations (it takes 4-bit weights for linear layers only: backends/xnnpack_int4.py)",
}

#: How each runtime runs per-group (blocked) int4 weights (only ONNX stores them).
_BLOCKED_RUN = {
    "onnx": "ONNX Runtime 1.32 has no kernel for them behind int8 activations (MatMulNBits does not fuse a "
    "MatMul whose input is dequantized): it dequantizes the weights to float on every run and computes the "
    "layers in float, slower than int8 and often than fp32 (the latency guard decides)",
}


def narrow_layers(model: nn.Module) -> Counter[int]:
    """Frozen int8 layers whose weights take fewer than 8 bits, counted by width."""
    return Counter(
        m.weight_bits
        for m in model.modules()
        if isinstance(m, QuantizedLayer) and m.frozen and m.weight_bits < 8
    )


def per_group_layers(model: nn.Module) -> Counter[int]:
    """Frozen int8 layers with per-group weight scales, counted by group size."""
    return Counter(
        m.group_size for m in model.modules() if isinstance(m, QuantizedLayer) and m.frozen and m.group_size
    )


def packed_int4_weights(artifact: Path) -> int:
    """How many INT4 initializers an ONNX file holds (one per 2..4-bit layer: the zero points are int8), in
    ``If`` branches too; 0 for other files."""
    if artifact.suffix != ".onnx":
        return 0
    import onnx  # lazy: only an ONNX artifact is read

    return _int4_initializers(onnx.load(str(artifact), load_external_data=False).graph)


def _int4_initializers(graph: Any) -> int:
    count = sum(t.data_type == _ONNX_INT4 for t in graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            for inner in [attr.g] if attr.HasField("g") else list(attr.graphs):
                count += _int4_initializers(inner)
    return count


class StorageUnreadable(Exception):
    """A backend's reader could not count the narrow layers of a written file (its cause in the message)."""


def weight_storage_note(
    model: nn.Module,
    backend: str,
    artifact: Path,
    packed_weights: Callable[[Path], int] = packed_int4_weights,
) -> Note | None:
    """What the artifact of ``model`` stores for its layers below 8 bits and how its runtime runs them
    (facts: ``bits`` {width: layers}, ``packed_int4`` layers, ``int8_storage`` layers); None when every
    layer is 8-bit. ``packed_weights`` counts the packed layers in the file (the backend's reader)."""
    widths = narrow_layers(model)
    if not widths:
        return None
    layers = sum(widths.values())
    try:
        packed = min(packed_weights(artifact), layers)
    except StorageUnreadable as exc:  # the file is written and checked: only the count is unknown
        said = ", ".join(f"{n} int{b}" for b, n in sorted(widths.items()))
        text = (
            f"weights below 8 bits ({said} layers): how the file stores them could not be read back ({exc})"
        )
        return Note(WEIGHT_STORAGE, text, bits=dict(widths), backend=backend, unread=str(exc))
    sizes = per_group_layers(model)
    blocked = min(sum(sizes.values()), packed)  # only an INT4 file holds them blocked
    said = ", ".join(f"{n} int{b}" for b, n in sorted(widths.items()))
    parts = []
    if packed - blocked:
        how = _PACKED_RUN.get(backend, "run as its runtime reads them")
        parts.append(f"{packed - blocked} stored as packed INT4 (two weights per byte); {how}")
    if blocked:
        groups = "/".join(str(g) for g in sorted(sizes))
        how = _BLOCKED_RUN.get(backend, "run as its runtime reads them")
        parts.append(
            f"{blocked} stored as packed INT4 with one scale per {groups} input channels (blocked "
            f"DequantizeLinear); {how}"
        )
    if layers - packed:
        parts.append(
            f"{layers - packed} stored as int8 values in int8 storage ({backend} here has no narrower "
            "storage for them): run by the int8 kernels with the same outputs, but the file is not smaller "
            "than int8"
        )
    text = f"weights below 8 bits ({said} layers): {'; '.join(parts)}"
    facts = {"bits": dict(widths), "packed_int4": packed, "int8_storage": layers - packed, "backend": backend}
    facts["per_group"] = blocked
    return Note(WEIGHT_STORAGE, text, **facts)
