#!/usr/bin/env python
"""Fine-tune or linearly evaluate a densessl backbone with mmsegmentation.

A thin wrapper over ``densessl.cli.finetune_seg`` (installed as a console command too; see README "Command-line tools")."""

import sys

from densessl.cli.finetune_seg import main

if __name__ == "__main__":
    sys.exit(main())
