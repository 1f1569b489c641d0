"""Guest-side programs of the built-in plugins (copied into guests, run with the guest's python3)."""

from pathlib import Path

#: This folder on the host.
HERE = Path(__file__).resolve().parent
