#!/usr/bin/env python
"""Evaluate a frozen backbone on DAVIS video object segmentation by label propagation (the DINO protocol).

A thin wrapper over ``densessl.cli.eval_video`` (installed as a console command too: ``densessl-eval-video``)."""

import sys

from densessl.cli.eval_video import main

if __name__ == "__main__":
    sys.exit(main())
