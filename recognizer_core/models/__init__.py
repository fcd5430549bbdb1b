"""Models: STGCN++ (mmaction2 1.2.0 compatible: graph, backbone, head, recognizer, checkpoint I/O) and the
DINO pose estimator. Import the submodules directly, e.g.
`from recognizer_core.models.recognizer import ModelConfig, build_recognizer`, so importing the package
stays cheap (the DINO model pulls in transformers)."""
