"""``python -m lab.cli``: the cnlab command without the bootstrap step."""

import sys

from lab.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
