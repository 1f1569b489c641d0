"""Make ``kabi`` importable in a guest (copied next to the script, or in
the repository's lab/ directory)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for cand in (HERE, os.path.join(HERE, "..", "..", "lab"), "/tmp", "/root"):
    if os.path.exists(os.path.join(cand, "kabi.py")):
        sys.path.insert(0, cand)
        break
