"""One request through a loaded model: ``generate`` (request -> frames, timed, through the feature cache),
``encode`` (frames -> mp4 and back), ``fidelity`` (a cached video against its uncached reference) and
``calibration`` (HyCa's solver map from a probe run of the same generator)."""

from hyca_batch.pipeline.generate import VideoGenerator

__all__ = ["VideoGenerator"]
