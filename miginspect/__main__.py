"""`python3 -m miginspect ...`: the same command line as the `miginspect` script."""

import sys

from .cli import main

sys.exit(main())
