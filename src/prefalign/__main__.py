"""`python -m prefalign ARGS`: the same as the `prefalign` command."""

import sys

from prefalign.cli import main

sys.exit(main())
