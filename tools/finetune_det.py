#!/usr/bin/env python
"""Fine-tune Faster / Mask R-CNN on a densessl backbone and report COCO-style box (and mask) AP.

A thin wrapper over ``densessl.cli.finetune_det`` (installed as a console command too; see README "Command-line tools")."""

import sys

from densessl.cli.finetune_det import main

if __name__ == "__main__":
    sys.exit(main())
