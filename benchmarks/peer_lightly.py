"""densessl vs lightly 1.6.0 (the peer library): VICRegL loss values, loss speed, multi-crop data speed.

Needs the benchmark venv (lightly is not a densessl dependency)::

    bash benchmarks/setup_bench_env.sh                  # once; idempotent
    benchmarks/.venv-bench/bin/python benchmarks/peer_lightly.py [--quick] [--parts values speed data]

(started with another interpreter that lacks lightly, the script re-executes itself with ``.venv-bench``).

(a) values -- the same inputs (projected global embeddings ``(B, 8192)`` for 2 + 6 views, local maps 2 x 7x7 + 6 x 3x3
    of width 512, and the cell grids of real multi-crop boxes in original-image pixels) go into lightly's
    ``VICRegLLoss`` and into densessl's ``VICRegLoss`` + ``VICRegLLocalLoss`` combined as ``VICRegL.forward`` does
    (``alpha * global + (1 - alpha) * local``). Mapping, read from lightly's installed source
    (``lightly/loss/vicregl_loss.py``, ``lightly/loss/vicreg_loss.py``, ``lightly/models/utils.py``):

    ====================================  =========================================  =================================
    lightly 1.6.0                         behaviour                                   densessl setting
    ====================================  =========================================  =================================
    ``_local_l2_loss``: top-k on features  k = num_matches[0] a->b, [1] b->a          ``l2_all_matches=False``
    ``_nearest_neighbors_on_grid``         same k by direction (not by view size)    ``topk_by_view_size=False``
                                                                                      (the ``official`` preset)
    ``utils.nearest_neighbors``: ``topk``  kept cells sorted by distance              ``order="distance"``
    ``nu_param * 0.5`` in the local        ``0.5 nu (cov_a + cov_b)``                  nothing: densessl already uses
    ``VICRegLoss``                         = ``nu (cov_a/2 + cov_b/2)``                ``nu (cov_a/2 + cov_b/2)``
    global ``nu_param`` (not halved)       cov averaged over views                    nothing (``VICRegLoss`` averages)
    ``gather_distributed=False``           local-batch statistics                      ``gather=False`` (same on 1 rank)
    k > cells: capped                      (e.g. k=20 on a 3x3 local view)            capped too
    ====================================  =========================================  =================================

    Remaining, not switchable: lightly breaks distance ties with ``topk`` (unspecified order) and computes grid
    distances with ``torch.cdist`` (matmul path, not exact); densessl uses a stable sort and exact differences. Both
    only matter for (near-)ties. The table also shows how far densessl's defaults are from lightly.

(b) speed -- loss forward + backward at ResNet-50-like settings (batch 16, D = 8192 global, 512 local, 2 x 7x7 +
    6 x 3x3), interleaved rounds: lightly vs densessl in the lightly-equivalent setting and in its default setting.
    Target: densessl >= 2x faster.

(c) data -- multi-crop with location output, single process, ``torch.set_num_threads(1)`` (crops/s per core), on the
    same PIL images (synthetic scenes from ``densessl.data.synthetic.render_scene``): densessl ``MultiCrop`` (defaults =
    official VICRegL recipe, bicubic; and the same with bilinear resampling, lightly's) vs lightly
    ``VICRegLTransform`` configured as close as its arguments allow (see ``lightly_transform``). Target: >= 1.5x.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCH_PYTHON = HERE / ".venv-bench" / "bin" / "python"

try:
    import lightly  # noqa: F401
except ImportError:
    if BENCH_PYTHON.exists() and Path(sys.prefix).resolve() != BENCH_PYTHON.parent.parent.resolve():
        os.execv(str(BENCH_PYTHON), [str(BENCH_PYTHON), *sys.argv])
    sys.exit("lightly is not installed: run `bash benchmarks/setup_bench_env.sh`, then "
             "`benchmarks/.venv-bench/bin/python benchmarks/peer_lightly.py`")

import numpy as np
import torch
from _common import finish_info, interleaved, machine_info, machine_line, median, summary, table, write_json
from lightly.loss import VICRegLLoss
from lightly.transforms.vicregl_transform import VICRegLTransform

from densessl.coords import cell_centers, to_pixels
from densessl.data.collate import collate_views
from densessl.data.synthetic import render_scene
from densessl.data.transforms import MultiCrop, MultiCropConfig
from densessl.objectives.vicreg import VICRegLoss
from densessl.objectives.vicregl import VICRegLLocalLoss

ALPHA = 0.75
N_GLOBAL, N_LOCAL = 2, 6
GRID = {True: 7, False: 3}  # global 7x7 (ResNet-50 on 224), local 3x3 (96)

# densessl settings compared with lightly; "lightly-equivalent" is the mapping in the module docstring.
OURS = {
    "densessl lightly-equivalent": dict(l2_all_matches=False, topk_by_view_size=False, order="distance"),
    "  same, raster order (official)": dict(l2_all_matches=False, topk_by_view_size=False, order="raster"),
    "  same, all feature matches": dict(l2_all_matches=True, topk_by_view_size=False, order="distance"),
    "  same, k by view size (corrected)": dict(l2_all_matches=False, topk_by_view_size=True, order="distance"),
    "densessl official preset": dict(l2_all_matches=True, topk_by_view_size=False, order="raster"),
    "densessl default (corrected)": dict(l2_all_matches=True, topk_by_view_size=True, order="raster"),
}


# ------------------------------------------------------------------------------------------------ inputs
def loss_inputs(batch: int, d_global: int, d_local: int, seed: int = 0) -> dict[str, Any]:
    """Projected embeddings, local maps and pixel grids of real multi-crop boxes (synthetic 256 px scenes)."""
    multicrop = MultiCrop(MultiCropConfig(n_global=N_GLOBAL, n_local=N_LOCAL))
    # Only the geometry is needed: crop boxes, flips and image sizes.
    views = collate_views([multicrop(render_scene(seed + i, (256, 256)).image, torch.Generator().manual_seed(seed + i))
                           for i in range(batch)])
    g = torch.Generator().manual_seed(seed)
    sides = [GRID[v < N_GLOBAL] for v in range(N_GLOBAL + N_LOCAL)]
    emb = [torch.randn(batch, d_global, generator=g) for _ in sides]
    maps = [torch.randn(batch, s * s, d_local, generator=g) for s in sides]
    grids = [to_pixels(cell_centers(views.boxes[:, v], views.flipped[:, v], s, s), views.image_size).flatten(1, 2)
             for v, s in enumerate(sides)]
    return {"emb": emb, "maps": maps, "grids": grids, "sides": sides}


def ours_loss(criteria: tuple[VICRegLoss, VICRegLLocalLoss], emb: list, maps: list, grids: list) -> dict[str, torch.Tensor]:
    global_criterion, local_criterion = criteria
    g = global_criterion(emb, N_GLOBAL)["loss"]
    local = local_criterion(maps, grids, N_GLOBAL)["loss"]
    return {"loss": ALPHA * g + (1 - ALPHA) * local, "global": g, "local": local}


def make_ours(settings: dict[str, Any]) -> tuple[VICRegLoss, VICRegLLocalLoss]:
    return (VICRegLoss(25.0, 25.0, 1.0, 1e-4, gather=False),
            VICRegLLocalLoss(25.0, 25.0, 1.0, 1e-4, num_matches=(20, 4), gather=False, **settings))


def lightly_args(emb: list, maps: list, grids: list, sides: list) -> dict[str, Any]:
    """lightly's input layout: (global vector, (B, h, w, D) map) tuples and (B, h, w, 2) grids."""
    feats = [(e, m.reshape(m.shape[0], s, s, m.shape[-1])) for e, m, s in zip(emb, maps, sides)]
    grid = [gr.reshape(gr.shape[0], s, s, 2) for gr, s in zip(grids, sides)]
    return dict(global_view_features=feats[:N_GLOBAL], global_view_grids=grid[:N_GLOBAL],
                local_view_features=feats[N_GLOBAL:], local_view_grids=grid[N_GLOBAL:])


def lightly_loss(criterion: VICRegLLoss, emb: list, maps: list, grids: list, sides: list) -> dict[str, torch.Tensor]:
    args = lightly_args(emb, maps, grids, sides)
    g = criterion._global_loss(global_view_features=args["global_view_features"],
                               local_view_features=args["local_view_features"])
    local = criterion._local_loss(**args)
    return {"loss": (criterion.alpha * g + (1 - criterion.alpha) * local).squeeze(), "global": g.squeeze(),
            "local": local.squeeze()}


def leaves(tensors: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    return [t.detach().to(dtype).clone().requires_grad_(True) for t in tensors]


# ------------------------------------------------------------------------------------------------ (a) values
def selection_differences(inp: dict[str, Any], settings: dict[str, Any]) -> dict[str, int]:
    """Compare, direction by direction, the matched (source, target) cells lightly and densessl select.

    Returns counts of directions: total, identical, and different only among (near-)equal distances (a tie: the
    sorted kept distances agree to 1e-3 px or 1e-4 relative) -- anything else would be a real mismatch.
    """
    from lightly.models import utils as lightly_utils  # noqa: F401  (the function mirrored below)

    from densessl.coords import pairwise_distances
    from densessl.objectives.vicregl import match_indices

    counts = {"directions": 0, "identical": 0, "ties_only": 0, "mismatch": 0}
    maps, grids = inp["maps"], inp["grids"]
    k0, k1 = 20, 4
    for i in range(N_GLOBAL):
        for j in range(len(maps)):
            if i == j:
                continue
            for kind in ("feature", "location"):
                for src, tgt, k in ((i, j, k0), (j, i, k1)):
                    if kind == "feature":
                        d_theirs = torch.cdist(maps[src], maps[tgt])
                        d_ours = torch.cdist(maps[src].float(), maps[tgt].float())
                    else:
                        d_theirs = torch.cdist(grids[src], grids[tgt])
                        d_ours = pairwise_distances(grids[src], grids[tgt])
                    # lightly.models.utils.nearest_neighbors, index part
                    nearest_val, nearest_idx = d_theirs.topk(k=1, dim=2, largest=False)
                    kk = min(k, d_theirs.shape[1])
                    _, src_theirs = nearest_val.squeeze(-1).topk(k=kk, dim=1, largest=False)
                    tgt_theirs = nearest_idx.squeeze(-1).gather(1, src_theirs)
                    src_ours, tgt_ours = match_indices(d_ours, k, settings["order"])
                    counts["directions"] += 1
                    if torch.equal(src_theirs, src_ours) and torch.equal(tgt_theirs, tgt_ours):
                        counts["identical"] += 1
                        continue
                    d = d_ours.double()
                    val_theirs = d.gather(2, tgt_theirs[..., None].expand(-1, -1, 1)).squeeze(-1)
                    val_theirs = torch.gather(d.gather(1, src_theirs[..., None].expand(-1, -1, d.shape[2])), 2,
                                              tgt_theirs[..., None]).squeeze(-1)
                    val_ours = torch.gather(d.gather(1, src_ours[..., None].expand(-1, -1, d.shape[2])), 2,
                                            tgt_ours[..., None]).squeeze(-1)
                    close = torch.allclose(val_theirs.sort(1).values, val_ours.sort(1).values, rtol=1e-4, atol=1e-3)
                    counts["ties_only" if close else "mismatch"] += 1
    return counts


def part_values(batch: int) -> dict[str, Any]:
    """Loss values and input gradients, densessl (fp32, as it always computes statistics) vs lightly (float64)."""
    print(f"\n== (a) loss values, batch {batch}, D 8192 / 512, views 2 x 7x7 + 6 x 3x3", flush=True)
    inp = loss_inputs(batch, 8192, 512)
    # Real multi-crop grids have exact distance ties (regular grids: whole rows/columns of cells at the same
    # distance from a crop edge), where lightly's topk and densessl's stable sort may keep different, equally
    # distant cells. A jitter of < 0.01 px per cell removes the ties without changing the geometry.
    jitter = torch.Generator().manual_seed(123)
    tie_free = [g + 0.01 * torch.rand(g.shape, generator=jitter) for g in inp["grids"]]
    cases = {"tie-free grids (real boxes + <0.01 px jitter)": {**inp, "grids": tie_free},
             "real multi-crop grids (exact ties)": inp}

    def evaluate(fn, case, dtype):
        tic = time.perf_counter()
        emb, maps = leaves(case["emb"], dtype), leaves(case["maps"], dtype)
        grids = [g.to(torch.float64) for g in case["grids"]]
        terms = fn(emb, maps, grids)
        terms["loss"].backward()
        grads = torch.cat([t.grad.flatten() for t in emb + maps]).double()
        print(f"  evaluated in {time.perf_counter() - tic:.1f} s ({dtype})", flush=True)
        return {k: float(v.detach()) for k, v in terms.items()}, grads

    lightly_criterion = VICRegLLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0, alpha=ALPHA,
                                    gather_distributed=False, eps=1e-4, num_matches=(20, 4))
    # Sanity, on small widths (lightly's D x D covariances are slow at 8192): lightly's forward() is
    # alpha * _global_loss + (1 - alpha) * _local_loss, the parts evaluated separately below.
    small = loss_inputs(batch, 64, 32, seed=7)
    with torch.no_grad():
        whole = float(lightly_criterion(**lightly_args(small["emb"], small["maps"], small["grids"], small["sides"])))
        parts = lightly_loss(lightly_criterion, small["emb"], small["maps"], small["grids"], small["sides"])
    assert abs(whole - float(parts["loss"])) <= 1e-5 * abs(whole), (whole, parts)

    # The global term reads only the embeddings and the local term only the maps, so lightly's float64 reference is
    # assembled from one global evaluation (shared by both cases) and one local evaluation per case.
    def lightly_reference(criterion: VICRegLLoss, case: dict[str, Any], cache: dict[str, Any]):
        tic = time.perf_counter()
        if "global" not in cache:
            emb = leaves(case["emb"], torch.float64)
            feats = [(e, None) for e in emb]
            g = criterion._global_loss(global_view_features=feats[:N_GLOBAL], local_view_features=feats[N_GLOBAL:])
            g.sum().backward()
            cache["global"] = (float(g), torch.cat([e.grad.flatten() for e in emb]).double())
        g_value, g_grad = cache["global"]
        maps = leaves(case["maps"], torch.float64)
        args = lightly_args([m[:, 0, :1] for m in maps], maps, [g.double() for g in case["grids"]], case["sides"])
        local = criterion._local_loss(**args)
        local.sum().backward()
        l_grad = torch.cat([m.grad.flatten() for m in maps]).double()
        alpha = criterion.alpha
        terms = {"loss": alpha * g_value + (1 - alpha) * float(local), "global": g_value, "local": float(local)}
        print(f"  lightly reference in {time.perf_counter() - tic:.1f} s (float64)", flush=True)
        return terms, torch.cat([alpha * g_grad, (1 - alpha) * l_grad])

    out: dict[str, Any] = {"cases": {}}
    rows = []
    cache: dict[str, Any] = {}
    for case_name, case in cases.items():
        ref, ref_grad = lightly_reference(lightly_criterion, case, cache)
        res: dict[str, Any] = {"lightly (float64)": ref}
        rows.append([case_name, "lightly VICRegLLoss (float64 reference)", ref["loss"], ref["global"], ref["local"],
                     0.0, 0.0, "-", "-"])
        if case is inp:
            naive = VICRegLLoss(num_matches=(20, 4))
            naive.vicreg_loss.nu_param = 1.0  # a port that forgets lightly's 0.5 on the local covariance
            n_ref, _ = lightly_reference(naive, case, cache)
            rows.append([case_name, "  lightly without its 0.5 local-cov scale", n_ref["loss"], n_ref["global"],
                         n_ref["local"], abs(n_ref["loss"] - ref["loss"]) / abs(ref["loss"]), float("nan"), "-", "-"])
            res["lightly without 0.5 local cov"] = n_ref
        for name, settings in OURS.items():
            criteria = make_ours(settings)
            vals, grad = evaluate(lambda e, m, g: ours_loss(criteria, e, m, g), case, torch.float32)
            rel = abs(vals["loss"] - ref["loss"]) / abs(ref["loss"])
            grad_rel = float((grad - ref_grad).abs().max() / ref_grad.abs().max())
            agree = rel <= 1e-5 and grad_rel <= 1e-4
            sel = selection_differences(case, settings) if name == "densessl lightly-equivalent" else None
            res[name] = {**vals, "settings": settings, "rel_diff_loss": rel, "rel_diff_grad_max": grad_rel,
                         "agrees": agree, "selection": sel}
            sel_txt = "-" if sel is None else (f"{sel['identical']}/{sel['directions']} same, {sel['ties_only']} "
                                               f"ties, {sel['mismatch']} other")
            rows.append([case_name, name, vals["loss"], vals["global"], vals["local"], rel, grad_rel,
                         "AGREES" if agree else "differs", sel_txt])
        out["cases"][case_name] = res
    t = table(["inputs", "criterion (densessl in fp32)", "loss", "global", "local", "|rel diff| loss",
               "max |rel diff| grad", "vs lightly", "matched cells vs lightly"], rows)
    print(t, flush=True)
    eq_free = out["cases"]["tie-free grids (real boxes + <0.01 px jitter)"]["densessl lightly-equivalent"]
    eq_real = out["cases"]["real multi-crop grids (exact ties)"]["densessl lightly-equivalent"]
    out.update({"batch": batch, "table": t, "agrees_tie_free": eq_free["agrees"],
                "real_grids_only_ties": eq_real["selection"]["mismatch"] == 0,
                "tolerance": "loss |rel| <= 1e-5, grad max|diff|/max|grad| <= 1e-4 (densessl fp32 vs lightly float64)"})
    return out


# ------------------------------------------------------------------------------------------------ (b) speed
def part_speed(batch: int, repeats: int, threads: list[int]) -> dict[str, Any]:
    results = {}
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        print(f"\n== (b) loss fwd+bwd speed, batch {batch}, {n_threads} thread(s), {repeats} rounds", flush=True)
        inp = loss_inputs(batch, 8192, 512, seed=1)
        lightly_criterion = VICRegLLoss(num_matches=(20, 4))
        ours_eq = make_ours(OURS["densessl lightly-equivalent"])
        ours_def = make_ours(OURS["densessl default (corrected)"])

        def run_lightly() -> None:
            VICRegLLoss.forward(lightly_criterion, **lightly_args(leaves(inp["emb"], torch.float32),
                                                                 leaves(inp["maps"], torch.float32),
                                                                 inp["grids"], inp["sides"])).sum().backward()

        def run_ours(criteria) -> None:
            ours_loss(criteria, leaves(inp["emb"], torch.float32), leaves(inp["maps"], torch.float32),
                      inp["grids"])["loss"].backward()

        fns = {"lightly VICRegLLoss": run_lightly,
               "densessl lightly-equivalent": lambda: run_ours(ours_eq),
               "densessl default (corrected)": lambda: run_ours(ours_def)}
        times, loads = interleaved(fns, repeats, warmup=1)
        base = median(times["lightly VICRegLLoss"])
        rows, res = [], {}
        for name, values in times.items():
            speedup = base / median(values)
            res[name] = {**summary(values), "speedup_vs_lightly": speedup}
            rows.append([name, median(values), min(values), speedup])
        t = table(["loss fwd+bwd", "median (s)", "min (s)", "lightly / this"], rows)
        print(t, flush=True)
        eq = res["densessl lightly-equivalent"]["speedup_vs_lightly"]
        results[f"threads={n_threads}"] = {"threads": n_threads, "batch": batch, "loadavg_per_round": loads,
                                           "results": res, "table": t, "target_speedup": 2.0, "target_met": eq >= 2.0}
    return results


# ------------------------------------------------------------------------------------------------ (c) data
def lightly_transform() -> VICRegLTransform:
    """lightly's VICRegL transform set as close as its arguments allow to ``MultiCropConfig()`` (official recipe).

    * scales (0.4, 1) / (0.08, 0.4), 2 x 224 + 6 x 96, hflip 0.5, no vflip on global views, grayscale 0.2;
    * colour jitter p 0.8 with lightly's default strength 0.5 x (0.8, 0.8, 0.4, 0.2) = (0.4, 0.4, 0.2, 0.1), ours;
      (the local views always use these defaults in lightly);
    * blur / solarize: densessl alternates (1.0, 0.1) / (0.0, 0.2) between even and odd views of each size; lightly has
      one probability per size, so we use the means 0.55 / 0.1 (same expected work);
    * not settable in lightly: bilinear resampling (densessl default bicubic), vertical flips p 0.5 on local views,
      3x3 / 7x7 grids of crop coordinates instead of boxes.
    """
    return VICRegLTransform(global_crop_size=224, local_crop_size=96, n_global_views=2, n_local_views=6,
                            global_crop_scale=(0.4, 1.0), local_crop_scale=(0.08, 0.4),
                            global_gaussian_blur_prob=0.55, local_gaussian_blur_prob=0.55,
                            global_gaussian_blur_sigmas=(0.1, 2.0), local_gaussian_blur_sigmas=(0.1, 2.0),
                            global_solarize_prob=0.1, local_solarize_prob=0.1, hf_prob=0.5, vf_prob=0.0,
                            cj_prob=0.8, cj_strength=0.5, random_gray_scale=0.2)


CATEGORIES = [  # (substring of a cProfile function label, category), first match wins
    ("'convert' of 'ImagingCore'", "PIL colour conversions (jitter, grayscale)"),
    ("'resize' of 'ImagingCore'", "PIL crop + resample"),
    ("'gaussian_blur'", "PIL Gaussian blur"),
    ("blend", "PIL blend (brightness/contrast/saturation)"),
    ("'transpose' of 'ImagingCore'", "PIL flips"),
    ("'point'", "PIL point ops (solarize)"),
    ("torch._C", "torch: to tensor + normalize"),
    ("built-in method torch", "torch: to tensor + normalize"),
    ("numpy", "numpy (hue shift, to tensor)"),
]


def cost_breakdown(fn) -> dict[str, float]:
    """cProfile one call of ``fn``; self time grouped into the categories above (rest: Python and other)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out: dict[str, float] = {}
    total = 0.0
    for (filename, line, name), (_, _, tottime, _, _) in stats.items():
        label = f"{filename}:{name}" if filename != "~" else name
        category = next((c for key, c in CATEGORIES if key in label), "Python and other")
        out[category] = out.get(category, 0.0) + tottime
        total += tottime
    return {"total_s": total, **{k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1])}}


def part_data(num_images: int, repeats: int, image_sizes: list[int]) -> dict[str, Any]:
    torch.set_num_threads(1)
    results = {}
    for size in image_sizes:
        print(f"\n== (c) multi-crop speed, {num_images} images of {size}x{size} per round, 1 thread, {repeats} rounds",
              flush=True)
        images = [render_scene(1000 + i, (size, size)).image for i in range(num_images)]
        ours_bicubic = MultiCrop(MultiCropConfig())
        ours_bilinear = MultiCrop(MultiCropConfig(interpolation="bilinear"))
        theirs = lightly_transform()
        crops = MultiCropConfig().n_global + MultiCropConfig().n_local

        def run_ours(multicrop: MultiCrop) -> None:
            for i, image in enumerate(images):
                views = multicrop(image, torch.Generator().manual_seed(i))
                assert len(views.crops) == crops and views.boxes.shape == (crops, 4)

        def run_lightly() -> None:
            torch.manual_seed(0)
            np.random.seed(0)
            for image in images:
                out = theirs(image)
                assert len(out) == 2 * crops  # views then grids

        fns = {"lightly VICRegLTransform": run_lightly, "densessl MultiCrop (bicubic, default)":
               lambda: run_ours(ours_bicubic), "densessl MultiCrop (bilinear, as lightly)": lambda: run_ours(ours_bilinear)}
        times, loads = interleaved(fns, repeats, warmup=1)
        base = median(times["lightly VICRegLTransform"])
        rows, res = [], {}
        for name, values in times.items():
            rate = crops * num_images / median(values)
            res[name] = {**summary(values), "crops_per_s_per_core": rate, "images_per_s": num_images / median(values),
                         "speedup_vs_lightly": base / median(values)}
            rows.append([name, rate, num_images / median(values), base / median(values)])
        t = table(["multi-crop (2x224 + 6x96, with boxes/grids)", "crops/s/core", "images/s", "speedup vs lightly"],
                  rows)
        print(t, flush=True)
        best = res["densessl MultiCrop (bilinear, as lightly)"]["speedup_vs_lightly"]
        entry = {"image_size": size, "num_images": num_images, "loadavg_per_round": loads,
                 "results": res, "table": t, "target_speedup": 1.5,
                 "target_met_default": res["densessl MultiCrop (bicubic, default)"]["speedup_vs_lightly"] >= 1.5,
                 "target_met_matched": best >= 1.5}
        if not entry["target_met_default"]:
            print("  target missed: cProfile self time by category (one pass over the images each)", flush=True)
            breakdown = {name: cost_breakdown(fn) for name, fn in fns.items()}
            categories = sorted({c for b in breakdown.values() for c in b if c != "total_s"},
                                key=lambda c: -breakdown["lightly VICRegLTransform"].get(c, 0.0))
            brows = [[c, *(f"{b.get(c, 0.0):.3f} ({b.get(c, 0.0) / b['total_s']:.0%})" for b in breakdown.values())]
                     for c in ["total_s", *categories]]
            bt = table(["self time (s) under cProfile", *breakdown], brows)
            print(bt, flush=True)
            entry["profile_breakdown"] = breakdown
            entry["profile_table"] = bt
        results[f"{size}px"] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["values", "speed", "data"], choices=["values", "speed", "data"])
    parser.add_argument("--batch", type=int, default=16, help="loss batch of the speed part (default 16)")
    parser.add_argument("--values-batch", type=int, default=8, help="loss batch of the values part (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch threads for the loss speed part, one run per value (default: torch's)")
    parser.add_argument("--images", type=int, default=64, help="images per round in the data part (default 64)")
    parser.add_argument("--data-repeats", type=int, default=7, help="interleaved rounds of the data part (default 7)")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[256, 512],
                        help="source image sides of the data part (default 256 512)")
    parser.add_argument("--quick", action="store_true", help="speed batch 8, values batch 4, 2 rounds, data 16 images x 3 rounds")
    parser.add_argument("--out", default=None, help="JSON path (default results/peer_lightly.json)")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.values_batch, args.repeats, args.images, args.data_repeats = 8, 4, 2, 16, 3
    threads = args.threads or [torch.get_num_threads()]
    info = machine_info()
    info["lightly"] = lightly.__version__
    print(machine_line(info) + f", lightly {lightly.__version__}", flush=True)
    start = time.perf_counter()
    payload: dict[str, Any] = {"benchmark": "peer_lightly", "machine": info, "settings": vars(args)}
    if "values" in args.parts:
        payload["values"] = part_values(args.values_batch)
    if "speed" in args.parts:
        payload["speed"] = part_speed(args.batch, args.repeats, threads)
    if "data" in args.parts:
        payload["data"] = part_data(args.images, args.data_repeats, args.image_sizes)
    finish_info(info)
    info["wall_s"] = time.perf_counter() - start
    path = write_json("peer_lightly" + ("_quick" if args.quick else ""), payload, args.out)
    print(f"\n{machine_line(info)}\nwall {info['wall_s']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
