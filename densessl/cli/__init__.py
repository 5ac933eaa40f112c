"""Command-line entry points (``densessl-train``, ``densessl-eval-seg``, ...), one module per tool.

Each module has a ``main(argv: list[str] | None = None) -> int`` that parses arguments and returns the exit code;
``pyproject.toml`` exposes them as console commands and ``tools/*.py`` are thin wrappers for use from a checkout.
"""
