"""Which of graphopt's narrow-weight layers XNNPACK takes as 4-bit, and how each other one is stored.

XNNPACK's partitioner and serializer (ExecuTorch 1.5.1) read a weight as **qc4w** (4-bit values, two per byte,
one scale per output channel, symmetric) when its ``dequantize_per_channel`` says ``int8`` with range
``-8..7``; the values are the same as graphopt's b-bit integers for b <= 4 (|q| <= 7), so a 2-, 3- or 4-bit
layer loses nothing in that form. Measured here (static int8 activations, graphopt's QDQ form):

- **linear**: delegated, a fully connected node on a qcint4 filter; outputs equal to the int8-storage
  program's bit for bit; the weights take half the bytes.
- **conv**: not taken. A k x k conv fails in the serializer (``convert_to_qc4w`` packs 2-D tensors only);
  a 1x1 conv lowers, but the runtime refuses the program it writes (``Failed to create convolution node ...
  xnn_status_invalid_parameter``). So conv layers keep int8 storage of their 4-bit values: same outputs,
  8 bits per weight in the file.
- 5..7-bit layers have no XNNPACK storage narrower than int8.
- per-group scales (``group_size``) with static int8 activations fail to lower (``shape '[C]' is invalid for
  input of size C * groups``): XNNPACK's group-wise 4-bit path (qb4w) is for dynamically quantized
  activations (torchao's 8da4w), which graphopt's static int8 layers are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from graphopt.quant.modules import QuantizedLayer
from graphopt.reporting.notes import Note

#: The ``dequantize_per_channel`` range XNNPACK reads as 4-bit (qc4w) and as 8-bit (qc8w) weights.
QC4W_RANGE = (-8, 7)
QC8W_RANGE = (-127, 127)

#: Why a 4-bit conv stays in int8 storage (said in the export note).
CONV_STAYS_INT8 = (
    "XNNPACK takes 4-bit weights for linear layers only: a conv's 4-bit weights fail its serializer (k x k) "
    "or its runtime (1x1), so conv layers keep their 4-bit values in int8 storage"
)


@dataclass(frozen=True)
class WeightForm:
    """How one frozen layer's weights go into the ``.pte``: the range its dequantize declares and the bits
    per weight the file spends."""

    quant_range: tuple[int, int]
    stored_bits: int


def weight_form(layer: QuantizedLayer) -> WeightForm:
    """qc4w for a linear layer of 2..4-bit weights; int8 storage (qc8w) for every other layer."""
    if layer.weight_bits <= 4 and layer.functional is F.linear:
        return WeightForm(QC4W_RANGE, 4)
    return WeightForm(QC8W_RANGE, 8)


def has_group_scales(layer: QuantizedLayer) -> bool:
    """Scales per group of input channels rather than one per output channel."""
    return layer.weight_scale.dim() != 1 or len(layer.weight_scale) != layer.weight_int8.shape[0]


#: Note key (graphopt.reporting.notes) of the ``.pte`` row's note naming the narrow layers kept in int8.
INT8_KEPT = "artifact:xnnpack_int8_kept"


def int8_kept_layers(model: nn.Module) -> list[str]:
    """The frozen layers of fewer than 8 bits that the ``.pte`` stores as int8 all the same (a conv, or 5..7
    bits), by qualified name."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantizedLayer) and m.frozen]
    return [name for name, m in layers if m.weight_bits < 8 and weight_form(m).stored_bits == 8]


def int8_kept_note(model: nn.Module) -> Note | None:
    """Which narrow layers the ``.pte`` keeps in int8 storage and why (facts: ``layers``); None when every
    narrow layer is 4-bit in the file, or there is none."""
    names = int8_kept_layers(model)
    if not names:
        return None
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    text = (
        f"{len(names)} layers below 8 bits kept as int8 in the .pte ({shown}): {CONV_STAYS_INT8}; "
        "5..7-bit layers have no narrower XNNPACK storage. Same outputs, 8 bits per weight in the file"
    )
    return Note(INT8_KEPT, text, layers=tuple(names))
