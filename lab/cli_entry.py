"""``python -m lab.cli_entry``: the cnlab command without the bootstrap step."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
