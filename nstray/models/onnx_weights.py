"""Read an ONNX file's weights into numpy, so nstray's own PyTorch modules can load them.

Plain graphs: initializers by name. Int8 QDQ graphs: every ``DequantizeLinear`` whose
input is an initializer is evaluated once, ``(q - zero_point) * scale`` (per-tensor or
per-axis), and the float result is keyed by the node's *output* name (the name the
consuming ``Conv``/``Add`` uses) and also by the quantized initializer's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["OnnxWeights", "read_onnx_weights"]


@dataclass
class OnnxWeights:
    """Float weights of an ONNX graph plus the graph itself (for tracing names through nodes)."""

    tensors: dict[str, np.ndarray]
    graph: "object"  # onnx.GraphProto
    # name of each DequantizeLinear output -> (scale, zero_point, axis) of that dequantization
    quant_params: dict[str, tuple[np.ndarray, np.ndarray, int]]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def producer(self, tensor_name: str):
        """The node that outputs ``tensor_name`` (or None for graph inputs / initializers)."""
        for node in self.graph.node:
            if tensor_name in node.output:
                return node
        return None

    def consumers(self, tensor_name: str) -> list:
        return [n for n in self.graph.node if tensor_name in n.input]


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    q = q.astype(np.float32)
    zp = zero_point.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    return (q - zp) * scale


def read_onnx_weights(path: str | Path) -> OnnxWeights:
    """Load ``path`` and return its float weights (dequantized where the graph is QDQ)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    tensors: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = numpy_helper.to_array(attr.t)
    quant: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        scale = tensors.get(node.input[1])
        zp = tensors.get(node.input[2]) if len(node.input) > 2 else np.zeros((), np.int8)
        if scale is None:
            continue
        quant[node.output[0]] = (scale, zp, axis)
        src = tensors.get(node.input[0])
        if src is not None and src.dtype in (np.int8, np.uint8, np.int32):
            deq = _dequantize(src, scale, zp, axis)
            tensors[node.output[0]] = deq
            tensors.setdefault(node.input[0] + ":float", deq)
    return OnnxWeights(tensors=tensors, graph=model.graph, quant_params=quant)
