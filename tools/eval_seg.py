#!/usr/bin/env python
"""Evaluate a frozen backbone on semantic segmentation: linear probe or dense kNN retrieval.

A thin wrapper over ``densessl.cli.eval_seg`` (installed as a console command too; see README "Command-line tools")."""

import sys

from densessl.cli.eval_seg import main

if __name__ == "__main__":
    sys.exit(main())
