"""COCO-style scoring of detectors: box and mask AP with pycocotools' ``COCOeval``.

* :func:`predictions_to_coco`: detector outputs -> COCO result entries (``[x, y, w, h]`` boxes, RLE masks).
* :func:`coco_evaluate`: COCO box (and mask) AP of result entries against an in-memory ground truth
  (``dataset.coco_ground_truth()`` of any dataset of ``densessl.det.datasets``), as a :class:`DetectionEvalResult`.
* :func:`evaluate_detector`: runs a detector of ``densessl.det.model.build_detector`` over a dataset (split over
  the processes under ``torch.distributed``) and scores its detections with :func:`coco_evaluate`.

VOC ``difficult`` objects are crowd (ignore) regions, so VOC numbers are COCO-style AP (AP50 close to, but not exactly,
the VOC07 11-point metric).
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.utils.data
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from tqdm import tqdm

from densessl.det.datasets import DetectionDataset, detection_collate, mask_to_rle

__all__ = ["DetectionEvalResult", "coco_evaluate", "evaluate_detector", "predictions_to_coco"]

logger = logging.getLogger("densessl")


@dataclass
class DetectionEvalResult:
    """COCO-style AP, in percent.

    Attributes:
        box_AP: Box AP averaged over IoU 0.50:0.95.
        box_AP50: Box AP at IoU 0.5.
        box_AP75: Box AP at IoU 0.75.
        box_APs: Box AP on small objects (``None`` if the ground truth has none); likewise ``APm`` and ``APl``.
        mask_AP: Mask AP (``None`` when masks were not evaluated); likewise the other ``mask_*`` numbers.
        per_class_AP50: Box AP50 per class name (``None`` for classes without ground truth).
        num_images: Images evaluated.
        num_detections: Detections evaluated.
    """

    box_AP: float
    box_AP50: float
    box_AP75: float
    box_APs: float | None = None
    box_APm: float | None = None
    box_APl: float | None = None
    mask_AP: float | None = None
    mask_AP50: float | None = None
    mask_AP75: float | None = None
    mask_APs: float | None = None
    mask_APm: float | None = None
    mask_APl: float | None = None
    per_class_AP50: dict[str, float | None] = field(default_factory=dict)
    num_images: int = 0
    num_detections: int = 0

    def metrics(self) -> dict[str, float]:
        """The AP numbers that were computed, ``{"box_AP": ..., "mask_AP": ...}`` (``None`` entries left out)."""
        return {k: v for k, v in asdict(self).items()
                if k.startswith(("box_", "mask_")) and v is not None}

    def format_table(self) -> str:
        """A plain-text table of the AP numbers (rows box/mask, columns AP AP50 AP75 APs APm APl)."""
        columns = ("AP", "AP50", "AP75", "APs", "APm", "APl")
        lines = [f"{'':6s}" + "".join(f"{c:>8s}" for c in columns)]
        for prefix in ("box", "mask"):
            if getattr(self, f"{prefix}_AP") is None:
                continue
            values = [getattr(self, f"{prefix}_{c}") for c in columns]
            lines.append(f"{prefix:6s}" + "".join(f"{v:8.2f}" if v is not None else f"{'-':>8s}" for v in values))
        return "\n".join(lines)


def _coco_from_dict(data: Mapping[str, Any]) -> Any:
    """An in-memory pycocotools ``COCO`` object (its prints are swallowed)."""
    try:
        from pycocotools.coco import COCO
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("COCO evaluation needs pycocotools: pip install pycocotools") from error
    coco = COCO()
    coco.dataset = {"info": {}, "licenses": [], **dict(data)}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def predictions_to_coco(outputs: Mapping[int, Mapping[str, Tensor]], with_masks: bool = False) -> list[dict[str, Any]]:
    """Convert detector outputs to COCO result entries.

    Args:
        outputs: ``image_id -> {"boxes": (N, 4) xyxy pixels, "scores": (N,), "labels": (N,) in 1..K,
            "masks": (N, 1, H, W) or (N, H, W) probabilities}``. Labels are the ground truth's category ids.
        with_masks: Also encode ``masks`` (binarized at 0.5) as compressed RLE.

    Returns:
        One dict per detection: ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score`` and, with
        masks, ``segmentation``.
    """
    results: list[dict[str, Any]] = []
    for image_id, output in outputs.items():
        boxes = output["boxes"].detach().float().cpu()
        scores = output["scores"].detach().float().cpu().tolist()
        labels = output["labels"].detach().cpu().tolist()
        masks = None
        if with_masks:
            masks = output["masks"].detach().cpu()
            if masks.dim() == 4:
                masks = masks[:, 0]
            masks = (masks >= 0.5).numpy()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for j in range(len(scores)):
            entry = {"image_id": int(image_id), "category_id": int(labels[j]), "bbox": [float(v) for v in xywh[j]],
                     "score": float(scores[j])}
            if masks is not None:
                entry["segmentation"] = mask_to_rle(masks[j])
            results.append(entry)
    return results


def _run_cocoeval(gt: Any, results: list[dict[str, Any]], iou_type: str) -> tuple[list[float], np.ndarray]:
    """Run COCOeval; return the 12 summary stats and the precision array ``(T, R, K, A, M)``."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()) as captured:
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.debug("COCOeval %s:\n%s", iou_type, captured.getvalue())
    return [float(v) for v in evaluator.stats], evaluator.eval["precision"]


def coco_evaluate(
    ground_truth: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    with_masks: bool = False,
) -> DetectionEvalResult:
    """COCO box (and mask) AP of detections against an in-memory ground truth.

    Args:
        ground_truth: COCO instances dict (``dataset.coco_ground_truth()``); annotation ids must be > 0.
        results: COCO result entries (``predictions_to_coco``); may be empty (every AP is then 0).
        with_masks: Also compute mask AP (ground truth and results need ``segmentation``).

    Returns:
        The AP numbers in percent and the per-class box AP50.

    Raises:
        ValueError: The ground truth has no (non-crowd) annotation, or a result names an unknown image.
    """
    annotations = ground_truth.get("annotations", [])
    if not any(not a.get("iscrowd", 0) for a in annotations):
        raise ValueError("ground truth has no (non-crowd) annotations: AP is undefined")
    gt = _coco_from_dict(ground_truth)
    unknown = {r["image_id"] for r in results} - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"detections for image ids not in the ground truth: {sorted(unknown)[:10]}")
    cat_ids = sorted(gt.getCatIds())
    names = {c["id"]: c.get("name", str(c["id"])) for c in ground_truth["categories"]}
    with_gt = {a["category_id"] for a in annotations if not a.get("iscrowd", 0)}
    values: dict[str, Any] = {"num_images": len(gt.getImgIds()), "num_detections": len(results)}
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    for iou_type in iou_types:
        prefix = "box" if iou_type == "bbox" else "mask"
        if not results:
            values.update({f"{prefix}_{k}": 0.0 for k in keys})
            if iou_type == "bbox":
                values["per_class_AP50"] = {names[c]: 0.0 if c in with_gt else None for c in cat_ids}
            continue
        # Without "bbox", pycocotools takes the mask area for the small/medium/large split (as detectron2 does).
        entries = [dict(r) for r in results] if iou_type == "bbox" else \
            [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        stats, precision = _run_cocoeval(gt, entries, iou_type)
        values.update({f"{prefix}_{k}": (100.0 * s if s >= 0 else None) for k, s in zip(keys, stats[:6])})
        for k in ("AP", "AP50", "AP75"):
            values[f"{prefix}_{k}"] = values[f"{prefix}_{k}"] or 0.0
        if iou_type == "bbox":
            per_class: dict[str, float | None] = {}
            for k, cat_id in enumerate(cat_ids):
                p = precision[0, :, k, 0, -1]  # IoU 0.5, all recalls, class k, all areas, 100 detections
                p = p[p > -1]
                per_class[names[cat_id]] = float(100.0 * p.mean()) if p.size and cat_id in with_gt else None
            values["per_class_AP50"] = per_class
    return DetectionEvalResult(**values)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    dataset: DetectionDataset,
    device: torch.device | str = "cpu",
    batch_size: int = 2,
    num_workers: int = 0,
    with_masks: bool | None = None,
    progress: bool = True,
) -> DetectionEvalResult:
    """Run a detector over a dataset and compute COCO box (and mask) AP.

    Under ``torch.distributed`` each process evaluates every ``world_size``-th image; detections are gathered and
    scored on rank 0, and every rank returns the same result.

    Args:
        model: A detector from :func:`build_detector` (DDP-wrapped or not); put in eval mode here and restored.
        dataset: An evaluation dataset (``training=False``).
        device: Device to run on.
        batch_size: Images per forward pass (per process).
        num_workers: DataLoader workers.
        with_masks: Evaluate masks; default: if the model is a Mask R-CNN.
        progress: Show a tqdm bar (rank 0).

    Returns:
        The AP numbers.
    """
    net = _unwrap(model)
    if with_masks is None:
        with_masks = isinstance(net, MaskRCNN)
    if with_masks and not dataset.has_masks:
        raise ValueError(f"{type(dataset).__name__} has no masks to evaluate mask AP against")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    indices = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers, collate_fn=detection_collate)
    was_training = net.training
    net.eval()
    results: list[dict[str, Any]] = []
    try:
        for batch in tqdm(loader, desc="evaluate", disable=not progress or rank != 0, leave=False):
            images = [image.to(device, non_blocking=True) for image in batch.images]
            outputs = net(images)
            results.extend(predictions_to_coco({t["image_id"]: o for t, o in zip(batch.targets, outputs)},
                                               with_masks=with_masks))
    finally:
        net.train(was_training)
    if distributed:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    box: list[Any] = [None]
    if rank == 0:
        box[0] = coco_evaluate(dataset.coco_ground_truth(), results, with_masks=with_masks)
    if distributed:
        dist.broadcast_object_list(box, src=0)
    return box[0]
