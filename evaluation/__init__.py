"""Evaluation (TrackEval) and benchmarks."""
