#!/usr/bin/env python3
"""The flight recorder's guest side: a bounded ftrace instance that records the module's CBUS events with the
scheduler and IRQ events while a scenario runs.

The host (``cnlab_plugins.flightrec``) runs::

    python3 -S flightrec.py start --buffer-kb 1024 EVENT...   # JSON: what was enabled, what the kernel lacks
    python3 -S flightrec.py stop                               # freeze the buffer, mark the end
    python3 -S flightrec.py save --max-kb 2048                 # the trace text, its tail if longer, on stdout
    python3 -S flightrec.py discard                            # remove the instance

``start`` (re)creates ``/sys/kernel/tracing/instances/cnlab`` (mounting tracefs there if needed) with
``buffer_size_kb`` per CPU in overwrite mode (the oldest events go first), the ``local`` clock (the one
printk stamps the console with) and each ``system:event`` given that exists; the rest is listed as missing.
Any failure: one line on stderr, exit 1.  Standard library only.
"""

import ctypes
import json
import os
import sys

TRACEFS = "/sys/kernel/tracing"
INSTANCE = TRACEFS + "/instances/cnlab"
#: Written into the buffer by ``stop``: the timeline's end mark.
STOP_MARK = "cnlab-flightrec: stop"


def write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def mount_tracefs():
    """Mount tracefs where it belongs unless it is there (the guest has no mount program: the syscall)."""
    if os.path.isdir(TRACEFS + "/instances"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount tracefs on {TRACEFS}: {os.strerror(err)}")


def discard():
    if os.path.isdir(INSTANCE):
        write(INSTANCE + "/tracing_on", "0")
        os.rmdir(INSTANCE)


def start(buffer_kb, events):
    mount_tracefs()
    discard()
    os.mkdir(INSTANCE)
    write(INSTANCE + "/tracing_on", "0")
    write(INSTANCE + "/buffer_size_kb", str(buffer_kb))
    write(INSTANCE + "/options/overwrite", "1")
    write(INSTANCE + "/trace_clock", "local")
    enabled, missing = [], []
    for event in events:
        path = INSTANCE + "/events/" + event.replace(":", "/") + "/enable"
        if os.path.exists(path):
            write(path, "1")
            enabled.append(event)
        else:
            missing.append(event)
    write(INSTANCE + "/tracing_on", "1")
    with open(INSTANCE + "/buffer_size_kb") as handle:
        size = handle.read().strip()
    return {"instance": INSTANCE, "buffer_kb": int(size) if size.isdigit() else size, "enabled": enabled,
            "missing": missing, "cpus": os.cpu_count()}


def stop():
    if not os.path.isdir(INSTANCE):
        return {"running": False}
    write(INSTANCE + "/trace_marker", STOP_MARK)
    write(INSTANCE + "/tracing_on", "0")
    return {"running": True}


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
    if not argv or argv[0] not in ("start", "stop", "save", "discard"):
        print("usage: flightrec.py start --buffer-kb N EVENT... | stop | save --max-kb N | discard",
              file=sys.stderr)
        return 2
    try:
        if argv[0] == "start":
            if len(argv) < 3 or argv[1] != "--buffer-kb" or not argv[2].isdigit():
                raise ValueError("start needs --buffer-kb N")
            print(json.dumps(start(int(argv[2]), argv[3:])))
        elif argv[0] == "stop":
            print(json.dumps(stop()))
        elif argv[0] == "save":
            if len(argv) != 3 or argv[1] != "--max-kb" or not argv[2].isdigit():
                raise ValueError("save needs --max-kb N")
            total, kept = save(int(argv[2]), sys.stdout.buffer)
            print(json.dumps({"bytes": total, "kept": kept}), file=sys.stderr)
        else:
            discard()
    except (OSError, ValueError) as exc:
        print(f"flightrec: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
