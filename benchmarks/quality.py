"""Quality table at small scale: the VICRegL paper's central ablation, on the embedded synthetic scenes or on real,
densely labelled scenes.

Every variant is pretrained with the **same CPU budget** (same backbone, batch, epochs, image stream and seed) from
the ResNet-18 recipe of the chosen data, then its frozen backbone is scored on that data's segmentation split:

* ``linear``: linear-probe mIoU (``densessl-eval-seg --protocol linear``),
* ``knn``: dense kNN retrieval mIoU (``--protocol knn``),
* ``match``: label-free learned-match precision (``densessl.diagnostics.match_precision_over_dataset``) between two
  global views of ``--match-images`` val images (no photometric augmentation): the fraction of nearest-neighbour
  feature matches that land within one cell of the geometrically corresponding cell, in percent.

``--data-root DIR`` (``--data scenes``): **real, densely labelled scenes** in densessl's folder layout
(``DIR/images/{train,val}/*.jpg``, ``DIR/masks/{train,val}/*.png``, ``DIR/classes.txt``; e.g. LabelMeFacade, Stanford
Background, Clothing Co-Parsing): every variant pretrains in-domain on the train images without their labels (plus
``DIR/unlabeled/`` when it exists: CCP's unlabelled pool), from ``configs/pretrain/*_<arch>_scenes.yaml`` with a
budget of ``--steps`` optimizer steps (default 200: ``train.epochs`` = that budget over the pool's steps per epoch),
then is scored on the val split at 224 px under two feature protocols: the last stage alone (``last``, the VICRegL
paper's linear protocol) and layer3 + layer4 concatenated (``l34``). Results go to
``results/quality_<DIR name>.json``, runs to ``runs/quality_<DIR name>/``.

``--data synthetic`` (default without ``--data-root``): the embedded scenes,
``configs/pretrain/*_resnet18_synthetic.yaml``, eval at 224 px on the last stage.

``--input-size 448`` (either data) evaluates at a finer grid; those evaluations are cached under names tagged with the
size.

``--video-root DAVIS`` also scores every backbone (random init included) by **video label propagation** on the DAVIS
val sequences (``densessl-eval-video``: DINO's protocol and settings, J&F-mean, J-mean, F-mean), at each of
``--video-levels`` (``last``: the last stage; ``layer3``: a ResNet's stride-16 map), cached as
``davis<year>_<level>.json`` in the run directory. The backbones are the scene set's: pretrained on its train images,
never on video.

Variants (``--variants``; all VICRegL ones use the VICRegL recipe of the data):

==============  ====================================================================================
random          no pretraining: the random initialisation of the same seed
vicreg          VICRegL with alpha = 1 (global VICReg criterion only; the paper's alpha = 1 row)
vicregl_a0.9    (synthetic only) alpha = 0.9
vicregl_a0.75   alpha = 0.75 (the paper's default)
geometric       alpha = 0.75, local term with the location (geometric) matching only
learned         alpha = 0.75, local term with the feature (learned) matching only
densecl         the DenseCL recipe of the data, same epochs
pixpro          the PixPro recipe of the data, same epochs
==============  ====================================================================================

Each (variant, seed) pretraining runs ``densessl.cli.train`` in a subprocess into ``--work-dir/<variant>_s<seed>``; a
finished run (``export/model.safetensors`` present) is reused and an interrupted one resumed, so the script can be
stopped and restarted; a run whose ``config.yaml`` differs from what the command asks (another ``--epochs`` or
``--pretrain-set``) is refused, never scored under the wrong settings. Evaluations are cached as JSON next to the run.
Runs go seed by seed (every variant of seed 0 first), so a partial run still gives a balanced table. The table shows
mean ± sample standard deviation over seeds and the pretraining wall time; with ``vicreg`` among the variants and two
seeds or more, a second table gives each row's same-seed difference to VICReg (mean ± std, seeds ahead; result key
``paired``), which cancels the spread that runs of one seed share. ``benchmarks/quality_merge.py`` merges result files
of disjoint seeds (e.g. pretrained in two sessions) into one table with the same two parts.

Usage::

    .venv/bin/python benchmarks/quality.py                          # synthetic, all variants, seeds 0 1
    .venv/bin/python benchmarks/quality.py --data-root ../data/stanford_background --seeds 0 1 2
    .venv/bin/python benchmarks/quality.py --data-root ../data/stanford_background --variants random vicreg \
        vicregl_a0.75 --seeds 0 --video-root ../data/davis2016 --video-levels last layer3
    .venv/bin/python benchmarks/quality.py --data-root ../data/labelmefacade --variants random vicreg vicregl_a0.75
    .venv/bin/python benchmarks/quality.py --seeds 0 1 2 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _common import RESULTS, cpu_model, machine_info  # noqa: E402
from quality_merge import format_paired, format_table, paired_differences  # noqa: E402

# --arch name -> timm model; the recipes are configs/pretrain/<method>_<--arch>_<--data>.yaml.
ARCHS = {"resnet18": "resnet18", "vit_tiny": "vit_tiny_patch16_224"}


def variants(data: str, arch: str = "resnet18") -> dict[str, tuple[str, list[str]]]:
    """``variant -> (config, overrides)`` for one data set and backbone (``""``: no pretraining). DenseCL and PixPro
    are only listed where their recipe exists (ResNet-18); the scene sets have no alpha = 0.9 row."""
    recipe = f"configs/pretrain/vicregl_{arch}_{data}.yaml"
    table = {
        "random": ("", []),
        "vicreg": (recipe, ["vicregl.alpha=1.0"]),
        "vicregl_a0.9": (recipe, ["vicregl.alpha=0.9"]),
        "vicregl_a0.75": (recipe, ["vicregl.alpha=0.75"]),
        "geometric": (recipe, ["vicregl.alpha=0.75", "vicregl.local_matching=location"]),
        "learned": (recipe, ["vicregl.alpha=0.75", "vicregl.local_matching=feature"]),
        "densecl": (f"configs/pretrain/densecl_{arch}_{data}.yaml", []),
        "pixpro": (f"configs/pretrain/pixpro_{arch}_{data}.yaml", []),
    }
    table = {name: entry for name, entry in table.items() if not entry[0] or (ROOT / entry[0]).is_file()}
    if data == "scenes":
        del table["vicregl_a0.9"]
    return table


def default_variants(data: str, arch: str = "resnet18") -> list[str]:
    """The variants run when ``--variants`` is not given: every one of the data set and backbone."""
    return list(variants(data, arch))


# Every variant name of some data set: the scene list, plus alpha = 0.9 (synthetic only).
ALL_VARIANTS = list(dict.fromkeys([*variants("synthetic"), *variants("scenes")]))
# Feature protocols per data set: name -> levels (DenseBackbone indices; -1 = last stage).
# For a ViT, -2 / -1 are its last two blocks (``l34`` keeps its name: the two last levels).
PROTOCOL_LEVELS = {"synthetic": {"": [-1]}, "scenes": {"last": [-1], "l34": [-2, -1]}}
# --data scenes: the pretraining budget in optimizer steps (train.epochs is derived from it per data set).
DEFAULT_SCENE_STEPS = 200


def scene_pool(data_root: Path, work_dir: Path) -> Path:
    """The pretraining pool of a scene set: ``DIR/images/train``, or, when ``DIR/unlabeled`` exists, a folder in
    ``work_dir`` that links both (the pretraining reader follows linked folders). Val images are never in it."""
    train = data_root / "images" / "train"
    if not (data_root / "unlabeled").is_dir():
        return train
    pool = work_dir / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    for name, target in (("train", train), ("unlabeled", data_root / "unlabeled")):
        link = pool / name
        if link.is_symlink() and link.resolve() != target.resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return pool


def count_images(folder: Path) -> int:
    """Image files under ``folder``, recursively, following linked folders (as the pretraining reader counts)."""
    from densessl.data.pretrain_data import ImageFolder

    return len(ImageFolder(folder).paths)


def epochs_for_steps(steps: int, images: int, batch_size: int) -> int:
    """``train.epochs`` that comes closest to ``steps`` optimizer steps on ``images`` images (at least 1)."""
    per_epoch = images // batch_size
    if per_epoch < 1:
        raise ValueError(f"{images} pretraining images are too few for one step of batch {batch_size}")
    return max(1, round(steps / per_epoch))


def run(cmd: list[str], log: Path, threads: int) -> None:
    """Run ``cmd`` from the repository root, output to ``log``; raise with the log's tail on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("w") as handle:
        code = subprocess.call(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed ({code}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail}")


def pretrain(variant: str, data: str, data_root: Path | None, seed: int, run_dir: Path, epochs: int | None,
             threads: int, arch: str = "resnet18", extra: tuple[str, ...] = ()) -> float:
    """Pretrain (or reuse / resume) one variant; returns the wall time of the pretraining in seconds. ``extra``:
    ``key=value`` overrides applied after the variant's own (``--pretrain-set``); ``data_root``: the scene set
    (``None`` for synthetic)."""
    config, overrides = variants(data, arch)[variant]
    if data == "scenes":
        assert data_root is not None
        overrides = [f"data.root={scene_pool(data_root, run_dir.parent)}", *overrides]
    settings = [f"train.seed={seed}", "train.progress=false", "train.diagnostics_every=0", "train.tensorboard=false",
                *overrides, *([f"train.epochs={epochs}"] if epochs is not None else []), *extra]
    check_reused_run(run_dir, config, settings)
    timing = run_dir / "pretrain_time.json"
    if (run_dir / "export" / "model.safetensors").exists() and timing.exists():
        return json.loads(timing.read_text())["seconds"]
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "densessl.cli.train", config, "--output-dir", str(run_dir), *settings]
    if (run_dir / "checkpoints" / "last.pt").exists():
        cmd.append("--resume")
    start = time.perf_counter()
    run(cmd, run_dir / "pretrain.log", threads)
    seconds = time.perf_counter() - start
    timing.write_text(json.dumps({"seconds": seconds, "resumed": "--resume" in cmd, "cpu_model": cpu_model()}))
    return seconds


def pretrain_cpu_models(run_dirs: list[Path]) -> dict[str, str]:
    """The CPU model each cached pretraining ran on (``run dir name -> model``; ``"unrecorded"`` for runs written
    before the model was recorded). Runs of one seed are bit-identical only on one CPU family: another one moves a
    pretrained row's kNN by up to ~0.6 (benchmarks/README.md, "Reproducing on another CPU")."""
    models = {}
    for run_dir in run_dirs:
        timing = run_dir / "pretrain_time.json"
        if timing.is_file():
            models[run_dir.name] = json.loads(timing.read_text()).get("cpu_model", "unrecorded")
    return models


# Keys that do not change the pretrained weights: a cached run may differ in them.
_RUN_KEYS_IGNORED = ("train.progress", "train.log_every", "train.tensorboard", "train.diagnostics_every",
                     "train.device", "data.num_workers")


def check_reused_run(run_dir: Path, config: str, settings: list[str]) -> None:
    """Refuse to reuse (or resume) the run in ``run_dir`` when its ``config.yaml`` differs from what this command
    would pretrain (another ``--epochs``, ``--pretrain-set`` or recipe): its scores would be filed under the wrong
    settings. Keys only one side has (a newer schema) and ``_RUN_KEYS_IGNORED`` are not compared.

    Raises:
        SystemExit: The differing keys, and how to proceed.
    """
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    import yaml

    from densessl.config_io import flatten
    from densessl.schema import to_dict
    from densessl.train.config import load_config

    saved = flatten(yaml.safe_load(saved_path.read_text()) or {})
    wanted = flatten(to_dict(load_config(ROOT / config, settings)))
    changed = {key: (saved[key], wanted[key]) for key in sorted(set(saved) & set(wanted))
               if saved[key] != wanted[key] and key not in _RUN_KEYS_IGNORED}
    if changed:
        listing = "; ".join(f"{key}: run {old!r}, asked {new!r}" for key, (old, new) in changed.items())
        sys.exit(f"error: {run_dir} holds a run pretrained with other settings ({listing}). Give this command its own "
                 f"--work-dir, or delete that run directory to pretrain it again")


def evaluate(weights: str, seed: int, protocol: str, out: Path, input_size: int, threads: int, data: str,
             data_root: Path | None, levels: list[int], arch: str = "resnet18") -> float:
    """mIoU (percent) of one protocol, cached in ``out``; a scene set (``data_root``) is read as a folder dataset."""
    if not out.exists():
        # a run's export states its architecture
        arch_args = ["--arch", ARCHS[arch]] if weights == "random" else []
        dataset = ["--dataset", "synthetic"] if data == "synthetic" else [
            "--dataset", "folder", "--data-root", str(data_root)]
        cmd = [sys.executable, "-m", "densessl.cli.eval_seg", "--weights", weights, *arch_args, *dataset,
               "--protocol", protocol, "--input-size", str(input_size), "--seed", str(seed), "--no-progress",
               "--levels", *map(str, levels), "--num-threads", str(threads), "--out", str(out)]
        run(cmd, out.with_suffix(".log"), threads)
    return float(json.loads(out.read_text())["mIoU"])


# --video-root: DAVIS label propagation of each backbone, per feature level (name -> DenseBackbone level).
VIDEO_LEVELS = {"last": -1, "layer3": -2}


def video_scores(weights: str, seed: int, video_root: Path, level: int, out: Path, threads: int,
                 arch: str = "resnet18", year: str = "2016") -> dict[str, float]:
    """J&F-mean, J-mean and F-mean (percent) of ``densessl-eval-video`` on the DAVIS val sequences of ``video_root``
    with the protocol's defaults at one feature ``level``, cached in ``out`` (``weights`` ``random``: the random init
    of this seed)."""
    if not out.exists():
        arch_args = ["--arch", ARCHS[arch]] if weights == "random" else []
        cmd = [sys.executable, "-m", "densessl.cli.eval_video", "--weights", weights, *arch_args, "--seed", str(seed),
               "--data-root", str(video_root), "--year", year, "--level", str(level), "--num-threads", str(threads),
               "--no-progress", "--out", str(out)]
        run(cmd, out.with_suffix(".log"), threads)
    record = json.loads(out.read_text())
    return {"JF": float(record["J&F"]), "J": float(record["J"]["mean"]), "F": float(record["F"]["mean"])}


def match_score(weights: str | None, seed: int, images: int, size: int, out: Path, data: str,
                data_root: Path | None, arch: str = "resnet18") -> float:
    """Learned-match precision (percent) of the backbone's last map, cached in ``out``."""
    if out.exists():
        return float(json.loads(out.read_text())["precision"])
    import torch

    from densessl.backbones import DenseBackbone
    from densessl.data.synthetic import SyntheticScenes
    from densessl.data.transforms import MultiCrop, geometry_only_config
    from densessl.diagnostics import match_precision_over_dataset

    torch.manual_seed(seed)  # the random init of this seed (as tools/eval_seg.py --weights random --seed SEED)
    backbone = DenseBackbone(ARCHS[arch], weights=weights)
    # Same protocol as tools/visualize_matches.py --precision-images N --scene-size 128: synthetic val scenes of
    # seed 0, two global views per image without photometric augmentation, view seed 0 (the same views for every
    # variant and seed).
    if data == "synthetic":
        scenes = SyntheticScenes(images, size=(128, 128), seed=0, split="val")
        pil = [scenes[i].image for i in range(len(scenes))]
    else:  # the first val images of the scene set
        from densessl.data.images import load_image

        assert data_root is not None
        files = sorted((data_root / "images" / "val").glob("*.jpg"))[:images]
        pil = [load_image(path) for path in files]
    result = match_precision_over_dataset(backbone, pil, MultiCrop(geometry_only_config(size)), seed=0, batch_size=8)
    out.write_text(json.dumps({"precision": 100 * result.precision, "chance": 100 * result.chance,
                               "num_valid": result.num_valid}))
    return 100 * result.precision


def rankme_scores(weights: str | None, seed: int, images: int, data: str, data_root: Path | None, out: Path,
                  arch: str = "resnet18") -> dict:
    """RankMe of the pooled and of the dense last-stage features on ``images`` val images at 224 px, cached."""
    if out.exists():
        return json.loads(out.read_text())
    import torch

    from densessl.backbones import DenseBackbone
    from densessl.diagnostics import dense_rankme, rankme
    from densessl.seg.features import SegEvalTransform
    from densessl.seg.readers import build_segmentation_dataset

    torch.manual_seed(seed)
    backbone = DenseBackbone(ARCHS[arch], weights=weights).eval()
    if data == "synthetic":
        dataset = build_segmentation_dataset("synthetic", None, "val", num_images=images, size=(128, 128), seed=0)
    else:
        dataset = build_segmentation_dataset("folder", str(data_root), "val")
    transform = SegEvalTransform(224)
    batch = torch.stack([transform(dataset[i])[0] for i in range(min(images, len(dataset)))])
    with torch.no_grad():
        features = backbone(batch)
    result = {"rankme_pooled": rankme(features.pooled), "rankme_dense": dense_rankme(features.maps[-1]),
              "images": int(batch.shape[0])}
    out.write_text(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["synthetic", "scenes"], default=None,
                        help="default: scenes when --data-root is a scene set (classes.txt, images/, masks/), else "
                             "synthetic")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="a scene set in the folder layout (images/{train,val}, masks/{train,val}, classes.txt)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"scenes: pretraining budget in optimizer steps (default {DEFAULT_SCENE_STEPS}; "
                             f"train.epochs is derived from it); --epochs sets the epochs instead")
    parser.add_argument("--variants", nargs="+", default=None, choices=ALL_VARIANTS,
                        help="default: every variant of the data set (scenes: all but vicregl_a0.9)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--arch", choices=list(ARCHS), default="resnet18",
                        help="backbone of every pretrained variant and of the random init (recipes "
                             "configs/pretrain/<method>_<arch>_<data>.yaml; vit_tiny has no DenseCL / PixPro recipe)")
    parser.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the recipe's)")
    parser.add_argument("--pretrain-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every pretraining, after the variant's own (a recipe ablation, "
                             "e.g. vicregl.projector=1024-1024-128); needs --work-dir, so that its runs are not "
                             "mixed with the recipe's cached ones")
    parser.add_argument("--input-size", type=int, default=224, help="segmentation eval input size")
    parser.add_argument("--match-images", type=int, default=64)
    parser.add_argument("--match-size", type=int, default=224, help="global view size for the match precision")
    parser.add_argument("--protocols", nargs="+", default=None,
                        help="feature protocols to evaluate (scenes: last l34; default: all of the data set)")
    parser.add_argument("--no-match", action="store_true", help="skip the match precision")
    parser.add_argument("--video-root", type=Path, default=None,
                        help="also score every backbone by DAVIS label propagation (densessl-eval-video, DINO's "
                             "settings) on this DAVIS folder (JPEGImages/, Annotations/, ImageSets/)")
    parser.add_argument("--video-year", choices=["2016", "2017"], default="2016")
    parser.add_argument("--video-levels", nargs="+", choices=list(VIDEO_LEVELS), default=["last"],
                        help="feature levels of the propagation (last: the last stage; layer3: a ResNet's stride-16 "
                             "map, the ViT-S/16 grid size)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: benchmarks/runs/quality_<data>")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: results/quality.json (synthetic), results/quality_<DIR name>.json (scenes)")
    args = parser.parse_args(argv)
    if args.data is None:
        is_scene_set = args.data_root is not None and (args.data_root / "classes.txt").is_file()
        args.data = "scenes" if is_scene_set else "synthetic"
    if args.data == "scenes":
        if args.data_root is None:
            parser.error("--data scenes needs --data-root DIR (a folder with classes.txt, images/ and masks/)")
        missing = [name for name in ("classes.txt", "images/train", "images/val", "masks/val")
                   if not (args.data_root / name).exists()]
        if missing:
            parser.error(f"--data-root {args.data_root} is not a scene set in the folder layout: missing "
                         f"{', '.join(missing)} (expected images/{{train,val}}/*.jpg, masks/{{train,val}}/*.png, "
                         f"classes.txt)")
    video_sequences: list[str] = []
    if args.video_root is not None:
        from densessl.video.davis import read_sequence_names

        try:  # the propagation tool's own reader: the same lists it accepts (also DAVIS 2016's pair list)
            video_sequences = read_sequence_names(args.video_root, args.video_year)
        except ValueError as error:
            parser.error(f"--video-root {args.video_root} is not a DAVIS folder: no "
                         f"ImageSets/{args.video_year}/val.txt ({error})")
    if args.steps is not None and (args.data != "scenes" or args.epochs is not None):
        parser.error("--steps sets the pretraining budget of --data scenes; give either --steps or --epochs")
    table = variants(args.data, args.arch)
    chosen = args.variants or default_variants(args.data, args.arch)
    unknown = [v for v in chosen if v not in table]
    if unknown:
        parser.error(f"variants {unknown} do not exist for --data {args.data} --arch {args.arch} (no recipe)")
    if args.pretrain_set and args.work_dir is None:
        parser.error("--pretrain-set changes the pretraining: give it its own --work-dir (the default one caches the "
                     "recipe's runs)")
    data_root = args.data_root.expanduser().absolute() if args.data == "scenes" else None
    data_name = f"_{data_root.name}" if data_root is not None else ""
    name = f"quality{data_name}" + ("" if args.arch == "resnet18" else f"_{args.arch}")
    work_dir = (args.work_dir or HERE / "runs" / name).absolute()
    if data_root is not None and args.epochs is None:
        from densessl.train.config import load_config

        pool = scene_pool(data_root, work_dir)
        recipe = ROOT / f"configs/pretrain/vicregl_{args.arch}_scenes.yaml"
        batch = load_config(recipe, [f"data.root={pool}"]).data.batch_size
        images = count_images(pool)
        args.epochs = epochs_for_steps(args.steps or DEFAULT_SCENE_STEPS, images, batch)
        print(f"{data_root.name}: {images} pretraining images, batch {batch}: {args.epochs} epochs = "
              f"{args.epochs * (images // batch)} steps", flush=True)
    out = args.out or RESULTS / f"{name}.json"
    protocols = PROTOCOL_LEVELS[args.data]
    if args.protocols:
        unknown = [p for p in args.protocols if p not in protocols]
        if unknown:
            parser.error(f"protocols {unknown} do not exist for --data {args.data} (choose from {list(protocols)})")
        protocols = {p: protocols[p] for p in args.protocols}

    import torch

    torch.set_num_threads(args.threads)
    info = machine_info()
    rows: dict[str, dict[str, list[float]]] = {v: {} for v in chosen}
    pretrained: list[Path] = []  # the run directories of this table's pretrainings
    for seed in args.seeds:
        for variant in chosen:
            run_dir = work_dir / f"{variant}_s{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            seconds = 0.0
            weights = "random" if variant == "random" else None
            if weights is None:
                seconds = pretrain(variant, args.data, data_root, seed, run_dir, args.epochs, args.threads,
                                   args.arch, tuple(args.pretrain_set))
                weights = str(run_dir)
                pretrained.append(run_dir)
            scores: dict[str, float] = {}
            for suffix, levels in protocols.items():
                tag = (f"_{suffix}" if suffix else "") + (
                    f"_{args.input_size}" if args.input_size != 224 else "")  # cache files of other settings
                for protocol in ("linear", "knn"):
                    scores[protocol + tag] = evaluate(weights, seed, protocol, run_dir / f"{protocol}{tag}.json",
                                                      args.input_size, args.threads, args.data, data_root, levels,
                                                      args.arch)
            if not args.no_match:
                file = None if weights == "random" else weights  # None: the random init of this seed
                scores["match"] = match_score(file, seed, args.match_images, args.match_size, run_dir / "match.json",
                                              args.data, data_root, args.arch)
                ranks = rankme_scores(file, seed, args.match_images, args.data, data_root, run_dir / "rankme.json",
                                      args.arch)
                scores["rankme_dense"] = ranks["rankme_dense"]
            for name in args.video_levels if args.video_root is not None else []:
                davis = video_scores(weights, seed, args.video_root.absolute(), VIDEO_LEVELS[name],
                                     run_dir / f"davis{args.video_year}_{name}.json", args.threads, args.arch,
                                     args.video_year)
                scores.update({f"davis_{key}_{name}": value for key, value in davis.items()})
            scores["pretrain_s"] = seconds
            print(f"{variant:14s} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)
            for key, value in scores.items():
                rows[variant].setdefault(key, []).append(value)

    print(format_table(rows))
    paired = paired_differences(rows, "vicreg") if len(args.seeds) > 1 else {}
    if paired:
        print(format_paired(paired, "vicreg"))
    cpu_models = pretrain_cpu_models(pretrained)
    if len(set(cpu_models.values())) > 1:
        print("warning: this table mixes pretrainings from different CPU models, which move a row by up to ~0.6 "
              "kNN mIoU (benchmarks/README.md, 'Reproducing on another CPU'): "
              + ", ".join(f"{name}: {model}" for name, model in sorted(cpu_models.items())), flush=True)
    info["loadavg_end"] = list(os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": info,
        "settings": {"data": args.data, "dataset": data_root.name if data_root is not None else "synthetic",
                     "data_root": str(data_root) if data_root is not None else None,
                     "arch": ARCHS[args.arch], "seeds": args.seeds,
                     "epochs": args.epochs, "pretrain_set": args.pretrain_set, "input_size": args.input_size,
                     "protocol_levels": protocols, "match_images": args.match_images,
                     "match_size": args.match_size, "threads": args.threads,
                     "video": None if args.video_root is None else {
                         "year": args.video_year, "levels": {n: VIDEO_LEVELS[n] for n in args.video_levels},
                         "sequences": len(video_sequences)},
                     "variants": {v: table[v] for v in chosen}},
        "results": rows,
        "paired": {"reference": "vicreg", "differences": paired},
        "pretrain_cpu_models": cpu_models,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
