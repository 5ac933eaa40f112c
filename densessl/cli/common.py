"""What the command-line tools share: the error line, run arguments, logging, exit codes.

Every command reports a user error as one line on stderr, ``error: <command>: <message>`` (``print_error``; a config
mistake reads ``error: <command>: config error: <key>: ...``), and exits with 2.

Exit codes of every training tool (``densessl-train``, ``densessl-finetune-det``): 0 done, 2 bad config, arguments,
data or run directory, 3 non-finite loss, 130 stopped by a signal after saving a checkpoint (a scheduler may requeue
with ``--resume auto``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from densessl.atomic import DiskFullError

EXIT_OK, EXIT_USAGE, EXIT_NON_FINITE, EXIT_STOPPED = 0, 2, 3, 130


RESUME_MODES = ("yes", "auto")


def print_error(command: str, message: object) -> int:
    """Print ``error: <command>: <message>`` as one line on stderr (whitespace and line breaks collapsed); returns
    ``EXIT_USAGE`` (2) for ``return print_error(...)``."""
    print(f"error: {command}: {' '.join(str(message).split())}", file=sys.stderr)
    return EXIT_USAGE


def add_resume_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--resume`` (= ``yes``) or ``--resume auto``; parse with :func:`explicit_resume` so that it never takes the
    next argument (an override, the config) as its value."""
    parser.add_argument("--resume", nargs="?", const="yes", default="no", choices=RESUME_MODES, help=help)


def explicit_resume(argv: Sequence[str] | None) -> list[str]:
    """``argv`` with every bare ``--resume`` not followed by one of its modes written ``--resume=yes``.

    argparse gives an optional-value flag the next word when it does not look like an option, so ``--resume
    train.epochs=4`` would read ``train.epochs=4`` as the resume mode.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    return [("--resume=yes" if arg == "--resume" and (i + 1 == len(args) or args[i + 1] not in RESUME_MODES) else arg)
            for i, arg in enumerate(args)]


# Per training tool: the folder of its shipped configs and an override example (no tool's help shows another's keys).
TOOL_CONFIGS = {"densessl-train": ("pretrain", "optim.base_lr=0.3 train.epochs=20"),
                "densessl-finetune-det": ("detection", "optim.lr=0.01 train.max_iters=1000")}


def add_run_arguments(parser: argparse.ArgumentParser, default_dir: str, command: str = "densessl-train") -> None:
    """``CONFIG``, overrides, ``--output-dir``, ``--resume [auto]``, ``--allow-config-change``, ``--print-config``."""
    folder, example = TOOL_CONFIGS[command]
    parser.add_argument("config", nargs="?", help="experiment YAML (only what differs from the defaults); a path, or "
                                                  "the name of a shipped config (--list shows them)")
    parser.add_argument("overrides", nargs="*", help=f"config overrides as key.sub=value, e.g. {example}")
    parser.add_argument("--list", action="store_true", help=f"list the shipped {folder}/ configs and exit")
    parser.add_argument("--output-dir", help=f"run directory (default: {default_dir}/<config name>)")
    add_resume_argument(parser, "continue from <output-dir>/checkpoints/last.pt; '--resume auto' resumes when a "
                                "checkpoint exists and starts otherwise (for requeued jobs)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume even if the config changes the model, batch size or crops (recorded in "
                             "resumes.jsonl)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults <- YAML <- overrides) as YAML and exit")


def setup_logging() -> int:
    """INFO logging on rank 0, warnings only on the others; returns the rank."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    return rank


def print_config(cfg: Any) -> None:
    """The resolved config as YAML on stdout (a pretraining config: the chosen method's section only)."""
    import yaml

    from densessl.schema import to_dict

    plain = to_dict(cfg)
    for section in getattr(cfg, "inactive_sections", list)():  # pretraining: only the chosen method's section
        plain.pop(section)
    print(yaml.safe_dump(plain, sort_keys=False, default_flow_style=False), end="")


def run_evaluation(command: str, produce: Callable[[], dict], out: str | None) -> int:
    """An evaluation tool's ``main`` after parsing: ``produce()`` -> the result record, written as JSON to ``out``
    when set; a ``ValueError``/``OSError`` is one ``error: <command>:`` line and exit 2."""
    import json

    from densessl.atomic import atomic_write_text

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        record = produce()
        if out:
            atomic_write_text(out, json.dumps(record, indent=2, allow_nan=False) + "\n")
            print(f"wrote {out}")
    except (OSError, ValueError) as error:
        return print_error(command, error)
    return EXIT_OK


def run_tool(body: Callable[[], int], non_finite: type[BaseException], command: str) -> int:
    """Run a training tool's body; turn user-facing errors into one ``error: <command>:`` line and an exit code."""
    from densessl.data.images import ImageLoadError

    try:
        return body()
    except non_finite as error:
        print_error(command, error)
        return EXIT_NON_FINITE
    except (FileExistsError, FileNotFoundError, ValueError, ImageLoadError, DiskFullError) as error:
        return print_error(command, error)


def training_main(
    argv: list[str] | None,
    *,
    description: str,
    command: str,
    default_dir: str,
    load: Callable[[str, list[str]], Any],
    train: Callable[[Any, Path, str, bool], Any],
    report: Callable[[Any, Any], None],
    non_finite: type[BaseException],
) -> int:
    """The whole command line of a training tool, around the recipe-specific ``load``/``train``/``report``.

    Args:
        argv: Arguments (``None``: ``sys.argv``).
        description: ``--help`` text.
        command: The console command's name, for the "continue with" hint.
        default_dir: Parent of the default run directory (``<default_dir>/<config name>``).
        load: ``(config path, overrides) -> config``; raises ``densessl.config_io.ConfigError``.
        train: ``(config, run dir, resume, allow_config_change) -> result`` with ``interrupted`` and ``iteration``.
        report: ``(result, config)``: prints the outcome on rank 0.
        non_finite: The recipe's non-finite-loss exception (exit code 3).
    """
    from densessl.schema import ConfigError

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, default_dir=default_dir, command=command)
    args = parser.parse_intermixed_args(explicit_resume(argv))
    if args.list:
        from densessl.config_io import SHIPPED_CONFIGS

        folder = Path(SHIPPED_CONFIGS) / TOOL_CONFIGS[command][0]
        for path in sorted(folder.glob("*.yaml")):
            first = path.read_text(encoding="utf-8").split("\n", 1)[0].lstrip("# ").strip()
            print(f"{path.stem:36s} {first}")
        return EXIT_OK
    if args.config is None:
        parser.error("the following arguments are required: config (or --list for the shipped configs)")
    rank = setup_logging()
    try:
        cfg = load(args.config, args.overrides)
    except ConfigError as error:
        return print_error(command, f"config error: {error}")
    if args.print_config:
        print_config(cfg)
        return EXIT_OK
    output_dir = Path(args.output_dir) if args.output_dir else Path(default_dir) / Path(args.config).stem

    def body() -> int:
        result = train(cfg, output_dir, args.resume, args.allow_config_change)
        if result.interrupted:
            print(f"stopped at iteration {result.iteration}; continue with: {command} {args.config} "
                  f"--output-dir {output_dir} --resume", file=sys.stderr)
            return EXIT_STOPPED
        if rank == 0:
            report(result, cfg)
        return EXIT_OK

    return run_tool(body, non_finite, command)


def check_output_path(out: str, option: str = "--out", example: str = "result.json") -> None:
    """Fail before any compute when a file could not be written to ``out`` (missing parent folders are fine).

    Raises:
        ValueError: ``out`` is a folder, an unwritable file, or under a file or an unwritable folder.
    """
    path = Path(out).absolute()
    if path.is_dir():
        raise ValueError(f"{option} {out!r} is a folder; give a file path, e.g. {option} {os.path.join(out, example)}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {out!r} exists and is not writable; choose another output path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing folder, where the missing ones would be created
    if not folder.is_dir():
        raise ValueError(f"{option} {out!r} cannot be created: {str(folder)!r} is a file, not a folder; choose another "
                         f"output path")
    if not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {out!r} cannot be created: folder {str(folder)!r} is not writable; choose another "
                         f"output path")
