"""Detection transfer: torchvision Faster/Mask R-CNN on a densessl backbone, fine-tuned and scored by COCO AP.

Modules:
    * ``densessl.det.datasets``: VOC XML, COCO JSON and generated-scene detection datasets, COCO RLE helpers.
    * ``densessl.det.model``: the detector on a densessl backbone (FPN, C4 or ViTDet-style simple pyramid;
      ``build_detector``).
    * ``densessl.det.coco``: COCO box/mask AP through pycocotools (``evaluate_detector``).
    * ``densessl.det.finetune``: the fine-tuning recipe's schema (``DetConfig``), sampler and loop (``finetune``);
      ``densessl-finetune-det`` runs it.
"""
