"""Recognize: a trained STGCN++ detector on skeleton files, videos and live streams -> per-person action events."""
