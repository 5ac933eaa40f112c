#!/usr/bin/env python
"""Convert a published checkpoint (VICRegL, VICReg, DenseCL, PixPro, DINO, iBOT, DINOv2) into a densessl backbone.

A thin wrapper over ``densessl.cli.convert`` (installed as a console command too; see README "Command-line tools")."""

import sys

from densessl.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
