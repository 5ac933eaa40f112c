"""Video object segmentation by label propagation on frozen features (DAVIS 2016 / 2017, the DINO protocol).

Modules:
    * ``densessl.video.davis``: the DAVIS folder layout (``DavisSequence``, ``read_davis``), frames and annotations.
    * ``densessl.video.propagation``: the DINO / CRW label propagation (``PropagationSettings``,
      ``propagate_sequence``) on any ``DenseBackbone`` (ConvNet or ViT).
    * ``densessl.video.metrics``: the DAVIS measures J (region IoU) and F (contour accuracy) as davis2017-evaluation
      computes them (``evaluate_sequence``, ``summarize``).

``densessl-eval-video`` (``densessl.cli.eval_video``) runs all three on a DAVIS folder.
"""
