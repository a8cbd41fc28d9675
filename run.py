#!/usr/bin/env python
"""Entry point: `python run.py train|resume|evaluate ...` (also installed as `marl`)."""

import sys

from marl.cli import main

if __name__ == "__main__":
    sys.exit(main())
