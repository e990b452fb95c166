"""`python -m broadcaster` runs the command-line interface."""

import sys

from broadcaster.cli import main

sys.exit(main())
