#!/usr/bin/env python
"""Print evaluation JSON files (from tools/eval_seg.py) side by side: ``python tools/compare_evals.py A.json B.json ...``.

A thin wrapper over ``densessl.cli.compare_evals`` (installed as a console command too; see README "Command-line tools")."""

import sys

from densessl.cli.compare_evals import main

if __name__ == "__main__":
    sys.exit(main())
