"""Export for production runtimes: ONNX graphs (``export_onnx``) and TensorRT engines built from them
(``build_engines``, needs TensorRT). The runtime that runs them without PyTorch is :mod:`etta_engine.runtime`."""

from etta_engine.export.onnx import PARTS, ExportError, export_onnx, graph_module


def build_engines(*args, **kwargs):
    """Build TensorRT engines from an ONNX export; see :func:`etta_engine.export.tensorrt.build_engines`."""
    from etta_engine.export.tensorrt import build_engines

    return build_engines(*args, **kwargs)


__all__ = ["PARTS", "ExportError", "build_engines", "export_onnx", "graph_module"]
