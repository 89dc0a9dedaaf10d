"""vsdmot: edge deployment kit for VSD-MOT.

Subpackages (each a top-level folder of the repository):
    runtime      frame/track types, quality gate, DSWR, tracker state, backends, pipeline, sinks
    edge         cameras and streams, `vsdmot-edge`, service, profiling, power meters
    calibration  degradations, calibration sets and feeds
    models       torch networks and training (`vsdmot-train`)
    export       pruning, ONNX, INT8, gates, bundle (`vsdmot-export`)
    evaluation   TrackEval wrapper and benchmarks (`vsdmot-eval`, `vsdmot-bench`)
"""

__version__ = "0.1.0"
