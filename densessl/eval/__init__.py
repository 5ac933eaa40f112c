"""Localization-sensitive evaluation: segmentation (linear probe, Hummingbird-style kNN, mmseg) and detection.

Modules:
    * ``densessl.eval.metrics``: the one confusion-matrix / mIoU implementation every evaluator uses.
    * ``densessl.eval.result``: ``SegEvalResult``, the result type of every segmentation protocol.
    * ``densessl.eval.features``: the eval transform and frozen feature extraction (``extract_features``).
    * ``densessl.eval.linear_seg``: the VICRegL linear probe (``run_linear_probe``).
    * ``densessl.eval.knn``: dense nearest-neighbour retrieval (``run_knn``).
    * ``densessl.eval.mmseg_plugin``: optional mmsegmentation integration (imports mmseg; not imported here).
    * ``densessl.eval.detection``: torchvision Faster/Mask R-CNN on densessl backbones (FPN, C4 or ViTDet-style simple
      pyramid; ``build_detector``).
    * ``densessl.eval.coco_eval``: COCO box/mask AP of those detectors through pycocotools (``evaluate_detector``).
"""
