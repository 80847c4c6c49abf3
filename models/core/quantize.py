"""Dynamic int8 quantisation of an artifact's ONNX graph with ONNX Runtime.

``quantize_dynamic`` stores the chosen ops' weights as int8 (with float scales) and quantises their
activations on the fly, per batch; nothing is calibrated, so no data is needed to build. The result
runs only on ONNX Runtime (``MatMulInteger``/``DynamicQuantizeLinear`` kernels): an int8 artifact
ships no ``model.safetensors`` and says ``"precision": "int8"`` in its spec config, which the
registry refuses to serve on PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PRECISION_KEY = "precision"  # spec.config key; absent means fp32 (artifacts published before int8 existed)
INT8 = "int8"


@dataclass(frozen=True)
class Int8Options:
    """``quantize_dynamic``'s knobs. ``per_channel``: one scale per output channel of each weight
    instead of one per tensor. ``reduce_range``: 7-bit weights, which avoids int16 overflow in the
    VPMADDUBSW path of CPUs without VNNI at some cost in precision. ``op_types``: the ops quantised
    (``MatMul``: the linear layers; ``Gather``: the embedding tables)."""

    per_channel: bool = False
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul",)

    def label(self) -> str:
        return f"{'+'.join(self.op_types)} per_channel={self.per_channel} reduce_range={self.reduce_range}"


def quantize_int8(source: Path, destination: Path, options: Int8Options) -> Path:
    """Write the int8 (QInt8 weights) dynamic quantisation of ``source`` to ``destination``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        model_input=str(source),
        model_output=str(destination),
        op_types_to_quantize=list(options.op_types),
        per_channel=options.per_channel,
        reduce_range=options.reduce_range,
        weight_type=QuantType.QInt8,
    )
    return destination


def quantized_op_types(path: Path) -> Sequence[str]:
    """The integer ops in a graph (e.g. ``MatMulInteger``): proof that quantisation took effect."""
    import onnx

    integer_ops = {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DequantizeLinear"}
    return sorted({node.op_type for node in onnx.load(str(path)).graph.node if node.op_type in integer_ops})
