"""Merge ``quality.py`` result files into one table over all their seeds, with same-seed differences.

Seeds of one table are often pretrained in several sessions (``--seeds 0 1 2`` once, ``--seeds 3 4 5`` later, into
other result files). This script concatenates the per-seed values of files written with the same settings and prints
two tables:

* mean ± sample standard deviation of every metric over all seeds (as ``quality.py`` prints it);
* the **same-seed difference** of every variant against a reference variant (default ``vicreg``): for each seed,
  ``variant - reference``, then their mean ± sample std and on how many seeds the variant is ahead. Runs of one seed
  share the backbone initialisation and the image stream, so the seed-to-seed spread they have in common cancels in
  the difference; it is the comparison to read when the two rows' spreads are larger than the gap between them.

Files must agree on every setting that changes a value (data set, arch, epochs, ``--pretrain-set``, eval input size,
feature protocols, threads, each variant's recipe; the match settings when both files have those columns). Two files
may hold the same seed only for different variants (a row of one seed measured in another run, e.g. random init added
to an existing pretraining); a (variant, seed) given twice is refused. A variant without a value for every seed of the
merged table, or a metric missing from one of its files, is left out (with a note). Files from different CPU models are
merged with a warning: a pretrained row moves across CPU families (``benchmarks/README.md``, "Reproducing on another
CPU").

Usage::

    .venv/bin/python benchmarks/quality_merge.py benchmarks/results/quality_stanford_background.json \\
        benchmarks/results/quality_stanford_background_s345.json --variants random vicreg vicregl_a0.75 \\
        --out benchmarks/results/quality_stanford_background_6seeds.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# Settings that change every result value; files that differ on one of them cannot share a table.
SAME_SETTINGS = ("data", "dataset", "arch", "epochs", "pretrain_set", "input_size", "protocol_levels", "threads")
# Settings that change only some metrics: compared only when both files have those metrics (a file written with
# --no-match merges with one that has them; those columns are then left out).
METRIC_SETTINGS = {("match_images", "match_size"): ("match", "rankme_dense"),
                   ("video",): tuple(f"davis_{key}_{level}" for key in ("JF", "J", "F") for level in ("last", "layer3"))}


def _has_metric(result: dict, metrics: tuple[str, ...]) -> bool:
    return any(m in scores for scores in result["results"].values() for m in metrics)


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` with 2 decimals; the value alone for one seed; ``-`` for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def paired_differences(rows: dict[str, dict[str, list[float]]], reference: str
                       ) -> dict[str, dict[str, dict[str, object]]]:
    """Same-seed differences ``variant - reference`` of every metric both rows have over the same seeds.

    ``rows[variant][metric]`` holds one value per seed, in the same seed order for every variant (as ``quality.py``
    writes them). Returns ``{variant: {metric: {"diffs": [...], "mean": m, "std": s, "ahead": k, "seeds": n}}}`` for
    every variant but the reference; ``std`` is the sample std (0.0 for one seed), ``ahead`` the number of seeds where
    the variant scores higher. ``pretrain_s`` is not a metric. Empty when the reference is not a row.
    """
    if reference not in rows:
        return {}
    ref = rows[reference]
    out: dict[str, dict[str, dict[str, object]]] = {}
    for variant, scores in rows.items():
        if variant == reference:
            continue
        for metric, values in scores.items():
            if metric == "pretrain_s" or len(ref.get(metric, [])) != len(values) or not values:
                continue
            diffs = [v - r for v, r in zip(values, ref[metric])]
            out.setdefault(variant, {})[metric] = {
                "diffs": diffs,
                "mean": statistics.mean(diffs),
                "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                "ahead": sum(d > 0 for d in diffs),
                "seeds": len(diffs),
            }
    return out


def format_table(rows: dict[str, dict[str, list[float]]]) -> str:
    """The mean ± std table of ``quality.py``: one line per variant, one column per metric, then pretrain seconds."""
    columns: list[str] = []
    for scores in rows.values():
        columns += [c for c in scores if c not in columns and c != "pretrain_s"]
    header = f"{'variant':14s} | " + " | ".join(f"{c:>14s}" for c in columns) + " | pretrain s"
    lines = [header, "-" * len(header)]
    for variant, scores in rows.items():
        cells = " | ".join(f"{mean_std(scores.get(c, [])):>14s}" for c in columns)
        lines.append(f"{variant:14s} | {cells} | {statistics.mean(scores.get('pretrain_s', [0.0])):.0f}")
    return "\n".join(lines)


def format_paired(paired: dict[str, dict[str, dict[str, object]]], reference: str) -> str:
    """One line per variant: ``mean ± std (ahead/seeds)`` of its same-seed difference to the reference, per metric."""
    if not paired:
        return ""
    columns: list[str] = []
    for metrics in paired.values():
        columns += [c for c in metrics if c not in columns]
    header = f"{'variant':14s} | " + " | ".join(f"{c:>20s}" for c in columns)
    lines = [f"same-seed difference to {reference} (mean ± std over seeds, seeds ahead):", header, "-" * len(header)]
    for variant, metrics in paired.items():
        cells = []
        for c in columns:
            d = metrics.get(c)
            cells.append("-" if d is None else f"{d['mean']:+.2f} ± {d['std']:.2f} ({d['ahead']}/{d['seeds']})")
        lines.append(f"{variant:14s} | " + " | ".join(f"{c:>20s}" for c in cells))
    return "\n".join(lines)


def merge_results(results: list[dict], names: list[str], variants: list[str] | None = None) -> tuple[dict, list[str]]:
    """Concatenate the seeds of ``quality.py`` result dicts written with the same settings.

    ``results`` are the parsed files, ``names`` their paths (for messages). Raises ``ValueError`` naming the files and
    the setting when they disagree, or when one variant's seed occurs in two files. Returns the merged result dict
    (``settings.seeds``: every seed in order of first appearance; ``results``: the variants with a value at every seed,
    or ``variants``, each metric a list in that seed order; per variant the metrics all its files have) and the notes
    on what was left out.
    """
    if len(results) < 2:
        raise ValueError("give at least two result files to merge")
    first = results[0]["settings"]
    for result, name in zip(results[1:], names[1:]):
        settings = result["settings"]
        keys = list(SAME_SETTINGS) + [k for group, metrics in METRIC_SETTINGS.items() for k in group
                                      if _has_metric(result, metrics) and _has_metric(results[0], metrics)]
        for key in keys:
            if settings.get(key) != first.get(key):
                raise ValueError(f"{name} and {names[0]} differ in {key!r} ({settings.get(key)!r} vs "
                                 f"{first.get(key)!r}): their values cannot share one table")
    seeds: list[int] = []
    owner: dict[tuple[str, int], str] = {}  # (variant, seed) -> the file holding it
    for result, name in zip(results, names):
        seeds += [seed for seed in result["settings"]["seeds"] if seed not in seeds]
        pairs = [(variant, seed) for variant in result["results"] for seed in result["settings"]["seeds"]]
        repeated = {pair: owner[pair] for pair in pairs if pair in owner}
        if repeated:
            raise ValueError(f"seed(s) {sorted({seed for _, seed in repeated})} of {name} are already in "
                             f"{', '.join(sorted(set(repeated.values())))} for the same variant: merge files of "
                             f"disjoint seeds, or of one seed with other variants")
        owner.update(dict.fromkeys(pairs, name))
    present = list(dict.fromkeys(v for r in results for v in r["results"]))
    lacking = {v: [seed for seed in seeds if (v, seed) not in owner] for v in present}
    notes: list[str] = []
    if variants is None:
        common = [v for v in present if not lacking[v]]
        notes = [f"variant {v} has no value for seed(s) {lacking[v]}: left out" for v in present if lacking[v]]
    else:
        missing = {v: lacking.get(v, seeds) for v in variants}
        missing = {v: absent for v, absent in missing.items() if absent}
        if missing:
            raise ValueError("variants missing from the files: " + "; ".join(
                f"{v} (no seed(s) {absent})" for v, absent in missing.items()))
        common = list(variants)
    rows: dict[str, dict[str, list[float]]] = {}
    recipes: dict[str, object] = {}
    for variant in common:
        holders = [r for r in results if variant in r["results"]]
        recipe = {json.dumps(r["settings"]["variants"].get(variant)) for r in holders}
        if len(recipe) > 1:
            raise ValueError(f"variant {variant} was pretrained from different recipes in these files: "
                             f"{sorted(recipe)}")
        recipes[variant] = holders[0]["settings"]["variants"].get(variant)
        metrics = [m for m in holders[0]["results"][variant] if all(m in r["results"][variant] for r in holders)]
        dropped = {m for r in holders for m in r["results"][variant]} - set(metrics)
        if dropped:
            notes.append(f"{variant}: {sorted(dropped)} not in every file: left out")
        by_seed = {seed: {m: r["results"][variant][m][i] for m in metrics}
                   for r in holders for i, seed in enumerate(r["settings"]["seeds"])}
        rows[variant] = {m: [by_seed[seed][m] for seed in seeds] for m in metrics}
    cpu = {r["machine"].get("cpu_model", "unknown") for r in results}
    if len(cpu) > 1:
        notes.append(f"warning: these files come from different CPU models ({', '.join(sorted(cpu))}); a pretrained "
                     f"row moves across CPU families (benchmarks/README.md, 'Reproducing on another CPU')")
    merged = {
        "machine": {"cpu_models": sorted(cpu)},
        "settings": {**first, "seeds": seeds, "variants": recipes},
        "results": rows,
        "merged_from": names,
    }
    return merged, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="quality.py result files, in seed order")
    parser.add_argument("--variants", nargs="+", default=None, help="rows to keep (default: those in every file)")
    parser.add_argument("--reference", default="vicreg", help="the row of the same-seed differences")
    parser.add_argument("--out", type=Path, required=True, help="merged result file to write")
    args = parser.parse_args(argv)
    results = []
    for file in args.files:
        try:
            results.append(json.loads(file.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            parser.error(f"cannot read {file}: {err}")
        if not {"settings", "results"} <= set(results[-1]):
            parser.error(f"{file} is not a quality.py result file (no 'settings' / 'results')")
    if args.out.resolve() in {f.resolve() for f in args.files}:
        parser.error(f"--out {args.out} is one of the inputs: write the merged table to a new file")
    try:
        merged, notes = merge_results(results, [str(f) for f in args.files], args.variants)
    except ValueError as err:
        parser.error(str(err))
    merged["paired"] = {"reference": args.reference,
                        "differences": paired_differences(merged["results"], args.reference)}
    for note in notes:
        print(note)
    print(f"seeds {merged['settings']['seeds']}")
    print(format_table(merged["results"]))
    paired = format_paired(merged["paired"]["differences"], args.reference)
    if paired:
        print(paired)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(merged, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
