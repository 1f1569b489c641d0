"""``python3 -m lab``: set up the host and the virtual environment, then run cnlab.

Standard library only until the hand-over to the virtual environment.
"""

import sys

from lab.cli.bootstrap import bootstrap_and_run

if __name__ == "__main__":
    sys.exit(bootstrap_and_run(sys.argv[1:]))
