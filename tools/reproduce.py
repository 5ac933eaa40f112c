#!/usr/bin/env python
"""Evaluate a checkpoint under a pinned protocol card and print published vs measured.

A thin wrapper over ``densessl.cli.reproduce`` (installed as a console command too; see README "Command-line tools")."""

import sys

from densessl.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
