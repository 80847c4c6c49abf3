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
    (``MatMul``: the linear layers; ``Gather``: the embedding tables). ``fp32_down_projections``:
    leave in fp32 the MatMuls that map a wider input to a narrower output (in a BERT, each layer's
    feed-forward output: its input, the GELU activations, carries the outliers that dynamic per-tensor
    activation quantisation handles worst)."""

    per_channel: bool = False
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul",)
    fp32_down_projections: bool = False

    def label(self) -> str:
        down = " fp32_down_projections" if self.fp32_down_projections else ""
        return f"{'+'.join(self.op_types)} per_channel={self.per_channel} reduce_range={self.reduce_range}{down}"


def down_projections(path: Path) -> list[str]:
    """Names of the MatMul nodes whose constant weight (in, out) has in > out."""
    import onnx

    graph = onnx.load(str(path)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    found = []
    for node in graph.node:
        weights = [shapes[i] for i in node.input if i in shapes and len(shapes[i]) == 2]
        if node.op_type == "MatMul" and len(weights) == 1 and weights[0][0] > weights[0][1]:
            found.append(node.name)
    return found


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
        nodes_to_exclude=down_projections(source) if options.fp32_down_projections else [],
    )
    return destination


def quantized_op_types(path: Path) -> Sequence[str]:
    """The integer ops in a graph (e.g. ``MatMulInteger``): proof that quantisation took effect."""
    import onnx

    integer_ops = {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DequantizeLinear"}
    return sorted({node.op_type for node in onnx.load(str(path)).graph.node if node.op_type in integer_ops})
