"""Evaluation of frozen dense features: semantic-segmentation linear probe and Hummingbird-style kNN retrieval.

Modules:
    * ``densessl.eval.metrics``: the one confusion-matrix / mIoU implementation every evaluator uses.
    * ``densessl.eval.result``: ``SegEvalResult``, the result type of every segmentation protocol.
    * ``densessl.eval.features``: the eval transform and frozen feature extraction (``extract_features``).
    * ``densessl.eval.linear_seg``: the VICRegL linear probe (``run_linear_probe``).
    * ``densessl.eval.knn``: dense nearest-neighbour retrieval (``run_knn``).
    * ``densessl.eval.mmseg_plugin``: optional mmsegmentation integration (imports mmseg; not imported here).
"""
