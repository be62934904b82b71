"""hyca-batch: batch text-to-video generation on Ray with HyCa feature caching."""

__version__ = "0.1.0"
