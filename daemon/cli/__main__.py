"""`python -m daemon.cli`: the same as the `textback` command."""

import sys

from daemon.cli import main

sys.exit(main())
