#!/usr/bin/env python3
"""The flight recorder's guest program: the saved trace of a failed scenario.

The guest agent starts and stops the recording itself (steps given by ``cnlab_plugins.flightrec``: the
tracefs instance ``instances/cnlab``, bounded, overwriting, on the ``local`` clock).  When a scenario
fails, the host runs::

    python3 -S flightrec.py save --max-kb 2048   # the trace text, its tail if longer, on stdout

and reads the byte counts, as JSON, from the last line of stderr.  Any failure: one line on stderr, exit 1.
Standard library only.
"""

import json
import sys

#: tracefs where the lab's init mounted debugfs (which mounts tracefs under it when first used).
TRACEFS = "/sys/kernel/debug/tracing"
INSTANCE = TRACEFS + "/instances/cnlab"
#: Written into the buffer when the recording stops: the timeline's end mark.
STOP_MARK = "cnlab-flightrec: stop"


def save(max_kb, out):
    """Copy the trace text to ``out``, only its last ``max_kb`` KiB (whole lines) if longer; the byte counts."""
    limit = max_kb * 1024
    total, chunks, kept = 0, [], 0
    with open(INSTANCE + "/trace", "rb") as handle:
        while True:
            chunk = handle.read(1 << 16)
            if not chunk:
                break
            total += len(chunk)
            chunks.append(chunk)
            kept += len(chunk)
            while chunks and kept - len(chunks[0]) >= limit:
                kept -= len(chunks.pop(0))
    data = b"".join(chunks)
    if len(data) > limit:
        data = data[len(data) - limit:]
        data = data[data.find(b"\n") + 1:]
    out.write(data)
    out.flush()
    return total, len(data)


def main(argv):
    if len(argv) != 3 or argv[0] != "save" or argv[1] != "--max-kb" or not argv[2].isdigit():
        print("usage: flightrec.py save --max-kb N", file=sys.stderr)
        return 2
    try:
        total, kept = save(int(argv[2]), sys.stdout.buffer)
    except OSError as exc:
        print(f"flightrec: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"bytes": total, "kept": kept}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
