"""Generation around exported graphs with NumPy and ONNX Runtime (or TensorRT) only: no PyTorch.

    from etta_engine.runtime import RuntimePipeline
    pipe = RuntimePipeline("exported/")            # the output of `etta export onnx`
    pipe.generate(["a dog barks"], seconds=10.0).save("dog.wav")

The graph interfaces and the manifest format are in :mod:`etta_engine.runtime.manifest`; schedules and solvers
in :mod:`etta_engine.runtime.sampling` (NumPy mirrors of :mod:`etta_engine.sampling`). Importing this package
imports neither torch nor transformers.
"""

from etta_engine.runtime.graph import Graph, ResidentTensor, ShapeError
from etta_engine.runtime.manifest import GRAPHS, Manifest, ManifestError, interface, read_manifest
from etta_engine.runtime.pipeline import BACKENDS, Audio, Conditioning, RuntimePipeline

__all__ = [
    "BACKENDS",
    "GRAPHS",
    "Audio",
    "Conditioning",
    "Graph",
    "Manifest",
    "ManifestError",
    "ResidentTensor",
    "RuntimePipeline",
    "ShapeError",
    "interface",
    "read_manifest",
]
