#!/usr/bin/env python
"""Pretrain a backbone: ``python tools/train.py CONFIG [--output-dir DIR] [--resume] [key.sub=value ...]``.

A thin wrapper over ``densessl.cli.train`` (installed as a console command too; see README "Command-line tools")."""

import sys

from densessl.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
