"""recognizer: Ray-distributed trainer and tuner for pose-based action recognition."""
__version__ = "0.1.0"
