"""Front ends: the ``cnlab`` command, the first-run set-up behind ``python3 -m lab``, the module lint.

Standard library only at import time (``python3 -m lab`` imports ``lab.cli.bootstrap`` before the
virtual environment exists).
"""
