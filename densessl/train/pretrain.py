"""The pretraining recipe: self-supervised pretraining of a backbone with one objective, on the shared engine.

``train(cfg, run_dir, resume)`` runs on a CPU, one GPU or under ``torchrun``, top to bottom: build the backbone and
objective, the multi-crop data, the optimizer; then for each step set the learning rate (warm-up + cosine), take one
optimizer step over ``optim.accumulate`` micro-batches (``engine.optimizer_step``), update the EMA teacher if the
method has one, log, checkpoint, and stop cleanly on SIGTERM/SIGINT. At the end the backbone is exported
into ``RUN/export`` (``densessl.weights.save_backbone``: ``model.safetensors`` with its architecture and config, and
timm's ``config.json``, so ``timm.create_model("local-dir:RUN/export", pretrained=True)`` loads it).

Run directory: see ``densessl.train.engine`` (``config.yaml``, ``metrics.jsonl``, ``train.log``, ``resumes.jsonl``,
``checkpoints/{last,previous,stable}.pt``, ``checkpoints/epoch_*.pt`` with ``train.keep_every_epochs``), plus the
export folder. A run that finishes drops ``previous.pt`` (``engine.drop_fallback``): ``last.pt`` is then the final,
verified checkpoint.

Exact resume: ``train(cfg, run_dir, resume="yes")`` continues from ``checkpoints/last.pt`` and ends with the same
weights as an uninterrupted run (bit-identical on the CPU) because data order, augmentations and RNG states are all
restored. A non-finite loss stops the run before the optimizer step, keeping the last good checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.backbones import DenseBackbone, DenseFeatures, encode_views
from densessl.data.collate import Views, collate_views
from densessl.data.device_augment import DeviceAugment, augment_seed
from densessl.data.pretrain_data import ImageFolder, PretrainDataset, ResumableSampler, SyntheticImages
from densessl.data.transforms import MultiCrop
from densessl.diagnostics import dense_diagnostics
from densessl.objectives import OBJECTIVES
from densessl.objectives.gram import GramConfig, gram_loss, patches, resize_to_grid
from densessl.objectives.momentum import ema_update, frozen_copy
from densessl.schema import to_dict
from densessl.train import engine
from densessl.train.config import Config
from densessl.train.engine import NonFiniteLossError, ResumeMode
from densessl.train.optim import build_optimizer, lr_at
from densessl.weights import export_folder, save_backbone

__all__ = ["FIXED_ON_RESUME", "CompileFailedError", "NonFiniteLossError", "Pretrainer", "TrainResult", "train"]

logger = logging.getLogger("densessl")

# Config keys a resume must not change: they change the model or what the saved iteration means.
FIXED_ON_RESUME = ("method", "model.arch", "model.levels", "model.model_kwargs", "data.source", "data.root",
                   "data.synthetic_images", "data.batch_size", "data.multicrop", "train.seed", "vicregl.projector",
                   "vicregl.local_projector", "vicreg.projector", "densecl", "pixpro")


class Pretrainer(nn.Module):
    """Backbone + objective (+ EMA teacher backbone, + Gram teacher) in one module, so DDP wraps a single forward.

    Objectives with ``uses_teacher = True`` receive the teacher backbone's features, computed by the same
    ``encode_views`` as the student's under ``no_grad``; ``update_teacher`` moves the teacher backbone and the
    objective's ``ema_pairs()`` heads by EMA after each optimizer step. An objective's ``student_views`` and
    ``teacher_views`` (``None``: every view, one forward per resolution) name the views each backbone encodes, one
    forward per view (``encode_views(select=...)``); the objective then receives those views' features in that order.
    An objective's ``bn_groups`` (DenseCL's shuffle-BN emulation) splits each of those forwards into that many
    BatchNorm chunks, the teacher's over a fresh random permutation of the batch at every step.

    With ``gram`` enabled (``densessl.objectives.gram``), ``gram_step(iteration)`` before each step takes or refreshes
    the Gram teacher and switches the term on from ``gram.start_iter``; ``forward`` then adds ``gram`` (the term) to
    the objective's outputs and ``gram.weight`` times it to ``loss``. The Gram teacher and ``gram_iteration`` (the
    iteration its weights were taken at, -1 before) and ``gram_refreshes`` are in the state dict, so checkpoints
    carry them.
    """

    def __init__(self, backbone: DenseBackbone, objective: nn.Module, channels_last: bool = False,
                 gram: GramConfig | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.objective = objective
        self.channels_last = channels_last
        self.teacher_backbone = frozen_copy(backbone) if getattr(objective, "uses_teacher", False) else None
        self.gram = gram if gram is not None and gram.enabled else None
        self.gram_teacher: nn.Module | None = None
        self.gram_active = False
        if self.gram is not None:
            self.gram.validate()
            if self.gram.source == "ema" and self.teacher_backbone is None:
                raise ValueError(f"gram.source: 'ema' needs an objective with an EMA teacher (DenseCL, PixPro), not "
                                 f"{type(objective).__name__}; use gram.source=online")
            if self.gram.weights is not None:
                external = DenseBackbone(self.gram.arch, weights=self.gram.weights)
                self.gram_teacher = frozen_copy(external)
            else:
                self.gram_teacher = frozen_copy(backbone)
            self.register_buffer("gram_iteration", torch.tensor(-1, dtype=torch.int64))
            self.register_buffer("gram_refreshes", torch.tensor(0, dtype=torch.int64))

    def gram_step(self, iteration: int) -> bool:
        """Before optimizer step ``iteration + 1`` (``iteration`` steps done): take the Gram teacher at
        ``gram.start_iter``, refresh it every ``gram.refresh_every`` iterations, at most ``gram.max_refreshes`` times;
        returns whether the term is on for this step."""
        cfg = self.gram
        self.gram_active = cfg is not None and iteration >= cfg.start_iter
        if not self.gram_active or cfg.weights is not None:
            return self.gram_active
        taken = int(self.gram_iteration)
        refresh = (taken >= 0 and cfg.refresh_every is not None and iteration - taken >= cfg.refresh_every
                   and (cfg.max_refreshes is None or int(self.gram_refreshes) < cfg.max_refreshes))
        if taken < 0 or refresh:
            source = self.teacher_backbone if cfg.source == "ema" else self.backbone
            self.gram_teacher.load_state_dict(source.state_dict())
            self.gram_iteration.fill_(iteration)
            self.gram_refreshes.add_(int(refresh))
        return True

    def _gram_term(self, features: list, views: Views) -> Tensor:
        """The Gram-anchoring term over the global views the student encoded (see ``densessl.objectives.gram``)."""
        cfg = self.gram
        teacher = self.gram_teacher
        teacher.eval()
        encoded = getattr(self.objective, "student_views", None) or range(views.num_views)
        chosen = [(position, view) for position, view in enumerate(encoded) if view < views.n_global]
        student, target = [], []
        for size in dict.fromkeys(tuple(views.view(view).shape[-2:]) for _, view in chosen):  # one forward per size
            group = [(position, view) for position, view in chosen if tuple(views.view(view).shape[-2:]) == size]
            images = torch.cat([views.view(view) for _, view in group])
            if cfg.teacher_scale != 1.0:
                images = F.interpolate(images, scale_factor=cfg.teacher_scale, mode="bicubic", align_corners=False)
            with torch.no_grad():  # a copy of the student: the same level; an external backbone: its last stage
                teacher_maps = teacher(images).maps[cfg.level if cfg.weights is None else -1]
            for slot, (position, _) in enumerate(group):
                maps = features[position].maps[cfg.level]
                student.append(patches(maps))
                block = teacher_maps[slot * views.batch_size:(slot + 1) * views.batch_size]
                target.append(patches(resize_to_grid(block, tuple(maps.shape[-2:]))))
        return gram_loss(torch.cat(student), torch.cat(target), cfg.normalization, cfg.remove_negative)

    def encode(self, views: Views) -> tuple[list[DenseFeatures], list[DenseFeatures] | None]:
        """The student's features of its ``student_views`` and (``None`` without a teacher) the EMA teacher's of its
        ``teacher_views`` under ``no_grad``, each forward split into the objective's ``bn_groups`` BatchNorm chunks
        (the teacher's over a fresh random permutation of the batch)."""
        groups = getattr(self.objective, "bn_groups", 1)
        features = encode_views(self.backbone, views, self.channels_last,
                                getattr(self.objective, "student_views", None), bn_groups=groups)
        if self.teacher_backbone is None:
            return features, None
        shuffle = None
        if groups > 1:  # shuffle-BN: the teacher's chunks hold other images than the student's
            shuffle = torch.randperm(views.batch_size, device=views.view(0).device)
        with torch.no_grad():
            teacher_features = encode_views(self.teacher_backbone, views, self.channels_last,
                                            getattr(self.objective, "teacher_views", None), bn_groups=groups,
                                            permutation=shuffle)
        return features, teacher_features

    def forward(self, views: Views) -> dict[str, Tensor]:
        features, teacher_features = self.encode(views)
        out = self.objective(features, views, teacher_features)
        if self.gram_active:
            term = self._gram_term(features, views)
            out = {**out, "loss": out["loss"] + self.gram.weight * term, "gram": term.detach()}
        return out

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA step of every (student, teacher) pair."""
        if self.teacher_backbone is None:
            return
        ema_update(self.teacher_backbone, self.backbone, momentum)
        for student, teacher in self.objective.ema_pairs():
            ema_update(teacher, student, momentum)


@dataclass
class TrainResult:
    """What a finished (or interrupted) run produced."""

    run_dir: Path
    iteration: int
    total_iterations: int
    last_loss: float
    backbone_path: Path | None  # RUN/export/model.safetensors; None when interrupted
    interrupted: bool


def build_pretrainer(cfg: Config) -> Pretrainer:
    """The backbone, objective and ``Pretrainer`` that ``cfg`` describes, on the CPU (seed the RNG first for a
    reproducible initialisation); its ``state_dict`` is the one ``checkpoints/*.pt`` hold under ``model``."""
    backbone = DenseBackbone(cfg.model.arch, levels=cfg.model.levels, weights=cfg.model.weights,
                             model_kwargs=cfg.model.model_kwargs)
    method_cls, _ = OBJECTIVES[cfg.method]
    return Pretrainer(backbone, method_cls.from_backbone(backbone, cfg.objective), cfg.train.channels_last,
                      gram=cfg.gram)


def _build_dataset(cfg: Config) -> PretrainDataset:
    if cfg.data.source == "synthetic":
        images = SyntheticImages(cfg.data.synthetic_images, cfg.data.synthetic_size, seed=cfg.train.seed)
    else:
        images = ImageFolder(cfg.data.root)  # type: ignore[arg-type]
    return PretrainDataset(images, MultiCrop(cfg.data.multicrop, augment_on=cfg.data.augment_on), seed=cfg.train.seed,
                           strict=cfg.data.strict, fast_decode=cfg.data.fast_decode)


def train(
    cfg: Config,
    run_dir: str | os.PathLike,
    resume: ResumeMode | bool = "no",
    *,
    allow_config_change: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Pretrain a backbone with ``cfg.method`` and export it.

    Args:
        cfg: A validated config (``densessl.train.config.load_config``).
        run_dir: Output folder.
        resume: ``"no"`` (the folder must not hold a run), ``"yes"`` (continue from its checkpoint) or ``"auto"``
            (continue if there is one); ``True``/``False`` mean yes/no.
        allow_config_change: Resume even when the config changes the model, batch or crops (recorded).
        on_step: Called with the iteration number after each finished step (after checkpointing), e.g. to stop a run
            from a test.

    Returns:
        A ``TrainResult``; ``interrupted`` is set when a signal stopped the run (after saving a checkpoint).

    Raises:
        NonFiniteLossError: The loss became NaN/inf.
        FileExistsError / densessl.train.engine.ResumeError / ValueError: Run directory, config or data problems.
    """
    run = engine.start_run(run_dir, to_dict(cfg), recipe="pretrain", resume=resume, device=cfg.train.device,
                           precision=cfg.train.precision, log_every=cfg.train.log_every,
                           tensorboard=cfg.train.tensorboard, wandb=cfg.train.wandb, fixed_keys=FIXED_ON_RESUME,
                           accumulate=cfg.optim.accumulate, allow_config_change=allow_config_change,
                           resolved_config=cfg)
    try:
        return _train(cfg, run, on_step)
    finally:
        engine.finish_run(run)


def _train(cfg: Config, run: engine.Run, on_step: Callable[[int], None] | None) -> TrainResult:
    device = run.device
    # ---- batch geometry: batch_size is global; each process runs micro-batches of this size
    micro_batch = engine.micro_batch_size(run, cfg.data.batch_size, cfg.optim.accumulate, "data.batch_size")
    if micro_batch < 2 and not run.distributed:
        raise ValueError(f"each forward pass needs >= 2 images for the variance term; got {micro_batch}")

    # ---- model (same init on every rank: seed before building; DDP also broadcasts from rank 0)
    torch.manual_seed(cfg.train.seed)
    pretrainer = build_pretrainer(cfg)
    model: nn.Module = pretrainer
    if run.distributed and cfg.train.sync_bn:
        if device.type == "cuda":
            model = pretrainer = nn.SyncBatchNorm.convert_sync_batchnorm(pretrainer)
        else:  # torch's SyncBatchNorm has no CPU kernel
            logger.warning("train.sync_bn ignored on %s: BatchNorm statistics stay per process", device.type)
    pretrainer.to(device)
    if cfg.train.channels_last:
        pretrainer.to(memory_format=torch.channels_last)
    if cfg.train.compile:  # compiling happens at the first step; failures: see _compile_failed
        for module in (pretrainer.backbone, pretrainer.teacher_backbone):
            if module is not None:
                compile_in_place(module, cfg.train.compile_backend, cfg.train.compile_mode)
    optimizer = build_optimizer([pretrainer], cfg.optim)
    scaler = engine.make_scaler(run)
    # Map-only objectives leave the backbone's pooling head (e.g. ConvNeXt's head norm) without gradients.
    model = engine.wrap_distributed(run, pretrainer, find_unused_parameters=not pretrainer.objective.uses_pooled)

    # ---- data
    dataset = _build_dataset(cfg)
    sampler = ResumableSampler(len(dataset), run.world_size, run.rank, seed=cfg.train.seed)
    steps_per_epoch = sampler.per_rank // (micro_batch * cfg.optim.accumulate)
    if steps_per_epoch < 1:
        raise ValueError(f"{len(dataset)} images are too few for one step of batch {cfg.data.batch_size}")
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_iters is not None:
        total_steps = min(total_steps, cfg.train.max_iters)
    warmup_steps = min(int(round(cfg.optim.warmup_epochs * steps_per_epoch)), total_steps)
    loader_generator = torch.Generator()  # keeps DataLoader seeding off the global RNG (exact resume)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=micro_batch, sampler=sampler, num_workers=cfg.data.num_workers,
        collate_fn=collate_views, drop_last=True, pin_memory=device.type == "cuda",
        generator=loader_generator, persistent_workers=False,
    )

    # ---- resume
    step = run.start_iteration
    if run.state is not None:
        pretrainer.load_state_dict(run.state["model"])
        optimizer.load_state_dict(run.state["optimizer"])
        scaler.load_state_dict(run.state["scaler"])
        engine.restore_rng(run.state["rng"])
        loader_generator.set_state(run.state["loader_generator"])
        run.state = None  # free the memory

    def save(path: Path | None = None) -> None:
        engine.save_checkpoint(run, step, {"epoch": step // steps_per_epoch, "model": pretrainer.state_dict(),
                                           "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                                           "loader_generator": loader_generator.get_state(),
                                           "arch": cfg.model.arch}, path, accumulate=cfg.optim.accumulate)

    diagnostic_images = []
    if run.main and cfg.train.diagnostics_every:
        count = min(cfg.train.diagnostics_images, len(dataset))
        diagnostic_images = [dataset.images[i] for i in range(count)]

    def log_diagnostics() -> None:
        record = {"iteration": step, "epoch": step / steps_per_epoch,
                  **dense_diagnostics(pretrainer.backbone, diagnostic_images, cfg.train.diagnostics_size,
                                      device, seed=cfg.train.seed)}
        engine.log_record(run, record, tensorboard_prefix="diagnostics")
        logger.info("iteration %d: match precision %.3f (chance %.3f), RankMe global %.1f local %.1f", step,
                    record["match_precision"], record["match_chance"], record["rankme_global"], record["rankme_local"])

    # data.augment_on=device: the loader made uint8 geometry-only crops; the photometric half runs here, batched on
    # the device, from a generator seeded by (seed, epoch, step, rank, micro-batch): reproducible and resumable.
    augmenter = DeviceAugment(cfg.data.multicrop) if cfg.data.augment_on == "device" else None

    def forward(module: nn.Module, batch: tuple[int, Views]) -> dict[str, Tensor]:
        micro, views = batch  # the micro-batch's index within the step, and its views
        if augmenter is None:
            return module(views.to(device, non_blocking=True))
        seed = augment_seed(cfg.train.seed, step // steps_per_epoch, step, run.rank, micro)
        return module(augmenter(views.to(device, non_blocking=True), torch.Generator().manual_seed(seed)))

    progress = engine.ProgressBar(run, total=total_steps, initial=step, desc=f"{cfg.method}/{cfg.model.arch}",
                                  enabled=cfg.train.progress)
    skipped_files: set[int] = set()  # dataset indices of the unreadable files skipped so far
    last_loss = math.nan
    interrupted = False
    backbone_path = None
    logger.info("training %s on %s: %d steps (%d per epoch), global batch %d, micro-batch %d x %d processes x %d "
                "accumulation, device %s, precision %s", cfg.method, cfg.model.arch, total_steps, steps_per_epoch,
                cfg.data.batch_size, micro_batch, run.world_size, cfg.optim.accumulate, device,
                run.amp_dtype or "fp32")
    model.train()
    try:
        if diagnostic_images and step == 0:
            log_diagnostics()
        while step < total_steps and not interrupted:
            epoch, step_in_epoch = divmod(step, steps_per_epoch)
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, start=step_in_epoch * micro_batch * cfg.optim.accumulate)
            batches = iter(loader)
            for _ in range(step_in_epoch, min(steps_per_epoch, step_in_epoch + total_steps - step)):
                lr = lr_at(step, total_steps, warmup_steps, cfg.optim, cfg.data.batch_size)
                engine.set_lr(optimizer, lr)
                micro_batches = [next(batches) for _ in range(cfg.optim.accumulate)]
                pretrainer.gram_step(step)  # takes or refreshes the Gram teacher when due (gram.enabled)
                for views in micro_batches:
                    skipped = views.extras.pop("skipped")
                    skipped_files.update(skipped[skipped >= 0].tolist())
                try:
                    terms = engine.optimizer_step(run, model, optimizer, scaler, enumerate(micro_batches), forward,
                                                  iteration=step, clip_grad=cfg.optim.clip_grad)
                except NonFiniteLossError as error:
                    raise engine.fall_back_to_stable(run, error) from None
                if pretrainer.teacher_backbone is not None:
                    pretrainer.update_teacher(pretrainer.objective.momentum_at(step, total_steps))
                step += 1
                last_loss = float(terms["loss"])
                progress.update(1)
                record = engine.log_step(run, step, total_steps, terms, lr=lr, images=cfg.data.batch_size,
                                         extra={"skipped_images": len(skipped_files)}, steps_per_epoch=steps_per_epoch)
                if record is not None:
                    progress.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_s']:.1f}")
                if diagnostic_images and (step % cfg.train.diagnostics_every == 0 or step == total_steps):
                    log_diagnostics()

                epoch_done = step % steps_per_epoch == 0
                if (
                    step == total_steps
                    or (cfg.train.checkpoint_every_iters and step % cfg.train.checkpoint_every_iters == 0)
                    or (epoch_done and (step // steps_per_epoch) % cfg.train.checkpoint_every_epochs == 0)
                ):
                    save()
                keep = cfg.train.keep_every_epochs
                if epoch_done and keep and (step // steps_per_epoch) % keep == 0:
                    save(run.run_dir / "checkpoints" / f"epoch_{step // steps_per_epoch:04d}.pt")
                if on_step is not None:
                    on_step(step)
                signum = engine.stop_requested(run)
                if signum:
                    save()
                    interrupted = True
                    logger.warning("stopped by signal %d at iteration %d; resume with --resume", signum, step)
                    break
            del batches
        if skipped_files:
            named = ", ".join(dataset.describe(index) for index in sorted(skipped_files)[:3])
            more = f" and {len(skipped_files) - 3} more" if len(skipped_files) > 3 else ""
            logger.warning("skipped %d unreadable images: %s%s (data.strict=true makes them fatal)",
                           len(skipped_files), named, more)
        if not interrupted and run.main:
            exported = save_backbone(pretrainer.backbone.model, export_folder(run.run_dir), cfg.model.arch,
                                     to_dict(cfg))
            engine.drop_fallback(run)
            backbone_path = exported.safetensors
            logger.info("done: %d iterations, last loss %.4f, backbone exported to %s (timm: create_model('local-dir:"
                        "%s', pretrained=True))", step, last_loss, exported.folder, exported.folder)
    except Exception as error:
        if cfg.train.compile and _is_compile_error(error):
            raise _compile_failed(error) from error
        raise
    finally:
        progress.close()
    return TrainResult(run.run_dir, step, total_steps, last_loss, backbone_path, interrupted)


class CompileFailedError(ValueError):
    """``train.compile=true`` but ``torch.compile`` failed; ``train.compile=false`` trains the same model uncompiled."""


def compile_in_place(module: nn.Module, backend: str = "inductor", mode: str = "default") -> None:
    """``train.compile``: ``torch.compile`` a backbone in place (``nn.Module.compile``).

    The module keeps its parameters, so state dicts, EMA, checkpoints and the export are the same as without compile
    (no ``_orig_mod.`` prefixes). One static graph per crop resolution (``dynamic=False``). ``mode`` applies to the
    ``inductor`` backend only.
    """
    module.compile(backend=backend, mode=mode if backend == "inductor" else None, dynamic=False)


def _is_compile_error(error: Exception) -> bool:
    """Whether ``error`` comes from torch.compile: tracing, code generation, the C++ build (CPU) or Triton (GPU)."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError

    return isinstance(error, (TorchDynamoException, CppCompileError))


def _compile_failed(error: Exception) -> CompileFailedError:
    """One clear error for a failed ``torch.compile``: the first line of the cause (the full error is chained)."""
    cause = getattr(error, "inner_exception", None) or error  # BackendCompilerFailed wraps the backend's error
    first = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    return CompileFailedError(
        f"train.compile=true: torch.compile failed ({type(cause).__name__}: {first[:300]}). Set train.compile=false "
        f"to train without compiling (same model and checkpoints, slower steps); torch.compile needs a working C++ "
        f"compiler (g++) on the CPU and Triton on GPUs")
