#!/usr/bin/env python
"""Train and score a linear depth probe on frozen features of an RGB-D folder (the DINOv2/DINOv3 NYUv2 protocol).

A thin wrapper over ``densessl.cli.eval_depth`` (installed as a console command too: ``densessl-eval-depth``)."""

import sys

from densessl.cli.eval_depth import main

if __name__ == "__main__":
    sys.exit(main())
