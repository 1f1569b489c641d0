"""Programs that run inside a guest (standard library plus ``kabi``).

They are shipped to the guest as files next to ``kabi.py`` and run with the
guest's python3; each prints one JSON object on stdout.
"""
