#!/usr/bin/env python3
"""A stand-in for qemu-system-x86_64 in unit tests: speaks just enough QMP.

It connects to the QMP and readiness sockets named on its command line, like
QEMU does, and behaves as FAKE_QEMU_MODE says:
ok, die (exit 1 before ready), hang (never ready), collide (first port
forward fails), wrong-nonce (announces another boot's nonce, then hangs).
"""

import json
import os
import re
import socket
import sys
import time

mode = os.environ.get("FAKE_QEMU_MODE", "ok")
argv = sys.argv[1:]
if mode == "die":
    print("qemu-system-x86_64: -drive: Could not open 'root.ext4': No such file", file=sys.stderr)
    sys.exit(1)
chardevs = {m.group(1): m.group(2) for a in argv if (m := re.match(r"socket,id=(\w+),path=(.+)", a))}
nonce = re.search(r"cnlab.nonce=(\w+)", argv[argv.index("-append") + 1]).group(1)
qmp = socket.socket(socket.AF_UNIX)
qmp.connect(chardevs["qmp"])
ready = socket.socket(socket.AF_UNIX)
ready.connect(chardevs["ready"])
qmp_file = qmp.makefile("rw")
qmp_file.write(json.dumps({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                                   "capabilities": ["oob"]}}) + "\n")
qmp_file.flush()
forwards = 0


def requests():
    """QMP is a JSON stream (no newline framing): decode objects as they arrive."""
    decoder, pending = json.JSONDecoder(), ""
    while chunk := qmp.recv(4096):
        pending += chunk.decode()
        while pending.strip():
            try:
                obj, end = decoder.raw_decode(pending.lstrip())
            except ValueError:
                break
            pending = pending.lstrip()[end:]
            yield obj


for request in requests():
    command = request.get("execute")
    reply = {"return": {}}
    if command == "human-monitor-command":
        forwards += 1
        failed = mode == "collide" and forwards == 1
        reply = {"return": "Could not set up host forwarding rule 'tcp:...'\r\n" if failed else ""}
    if "id" in request:
        reply["id"] = request["id"]
    qmp_file.write(json.dumps(reply) + "\n")
    qmp_file.flush()
    if command == "cont":
        if mode in ("ok", "collide"):
            ready.sendall(f"CNLAB-READY nonce={nonce} cpus=2 modules=none\r\n".encode())
        elif mode == "lpj":  # the init measured the boot CPU's loops_per_jiffy
            ready.sendall(f"CNLAB-READY nonce={nonce} cpus=2 modules=none lpj=10384536\r\n".encode())
        elif mode == "wrong-nonce":
            ready.sendall(b"CNLAB-READY nonce=0000 cpus=2 modules=none\r\n")
    if command == "quit":
        sys.exit(0)
time.sleep(3600)
