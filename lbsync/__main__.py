"""`python -m lbsync` runs the same CLI as the `lbsync` console script."""

import sys

from .cli import main

sys.exit(main())
