"""Segmentation transfer: frozen-feature probes (linear, dense kNN) and mmsegmentation fine-tuning.

Modules:
    * ``densessl.seg.dataset``: ``SegSample`` / ``SegmentationDataset``, the type every reader returns.
    * ``densessl.seg.readers``: VOC, ADE20K, Cityscapes, COCO-Stuff, folder and generated-scene readers
      (``build_segmentation_dataset``).
    * ``densessl.seg.metrics``: the one confusion-matrix / mIoU implementation every evaluator uses.
    * ``densessl.seg.result``: ``SegEvalResult``, the result type of every segmentation protocol.
    * ``densessl.seg.features``: the eval transform and frozen feature extraction (``extract_features``).
    * ``densessl.seg.linear``: the VICRegL linear probe (``run_linear_probe``).
    * ``densessl.seg.knn``: dense nearest-neighbour retrieval (``run_knn``).
    * ``densessl.seg.config``: the evaluation schema (``EvalSegConfig``).
    * ``densessl.seg.evaluate``: the evaluation ``densessl-eval-seg`` and ``densessl-reproduce`` run (``evaluate``).
    * ``densessl.seg.mmseg_plugin``: optional mmsegmentation integration (imports mmseg; not imported here), with
      ``mmcv_ops_standin`` for mmcv-lite installs.
"""
