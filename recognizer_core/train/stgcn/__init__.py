"""STGCN++ action recognition training on the shared core (`recognizer_core.train`)."""
