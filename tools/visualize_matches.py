#!/usr/bin/env python
"""Draw geometric vs learned matches between two views of one image, and print the label-free match precision.

A thin wrapper over ``densessl.cli.visualize_matches`` (installed as a console command too; see README "Command-line tools")."""

import sys

from densessl.cli.visualize_matches import main

if __name__ == "__main__":
    sys.exit(main())
