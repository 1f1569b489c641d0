#!/usr/bin/env python3
"""A stand-in for qemu-system-x86_64 in unit tests: speaks just enough QMP.

It connects to the QMP and readiness sockets named on its command line, like
QEMU does, and behaves as FAKE_QEMU_MODE says:
ok, die (exit 1 before ready), hang (never ready), collide (first port
forward fails), wrong-nonce (announces another boot's nonce, then hangs).

Saved states (lab.guest.snapshot): a shared RAM file named on the command
line is created; ``migrate`` and ``migrate-incoming`` end with a MIGRATION
"completed" event; the host's hold line (before a save) is answered with
"sshd held"; a restored guest (``-incoming defer``) answers the host's
resume line with a resume report.  Modes for restores only: restore-bad
(the report says reseeding failed), restore-die (QEMU exits loading the
state), restore-fail (the load ends with a "failed" event), hold-fail (the
init cannot hold sshd, so no state can be saved), restore-after-ssh (the
resume report waits, up to 10 s, for the file FAKE_QEMU_SSH_FLAG: the test's
SSH connect makes it).

Taint questions ("CNLAB-TAINT id=...") are answered with a stale answer for another id first, then
tainted=12288 plus the number of questions so far; or, by mode: taint-err (err=13), taint-silent (no
answer), taint-die (QEMU exits instead).
"""

import json
import os
import re
import socket
import sys
import threading
import time

mode = os.environ.get("FAKE_QEMU_MODE", "ok")
argv = sys.argv[1:]
if mode == "die":
    print("qemu-system-x86_64: -drive: Could not open 'root.ext4': No such file", file=sys.stderr)
    sys.exit(1)
chardevs = {m.group(1): m.group(2) for a in argv if (m := re.match(r"socket,id=(\w+),path=(.+)", a))}
nonce = re.search(r"cnlab.nonce=(\w+)", argv[argv.index("-append") + 1]).group(1)
incoming = "-incoming" in argv
for arg in argv:
    ram = re.match(r"memory-backend-file,.*size=(\d+)M,mem-path=(.+),share=on$", arg)
    if ram:
        with open(ram.group(2), "wb") as f:
            f.truncate(int(ram.group(1)) << 20)
qmp = socket.socket(socket.AF_UNIX)
qmp.connect(chardevs["qmp"])
ready = socket.socket(socket.AF_UNIX)
ready.connect(chardevs["ready"])
qmp_file = qmp.makefile("rw")
qmp_file.write(json.dumps({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                                   "capabilities": ["oob"]}}) + "\n")
qmp_file.flush()
forwards = 0
questions = []


def event(name, **data):
    qmp_file.write(json.dumps({"event": name, "data": data, "timestamp": {"seconds": 0, "microseconds": 0}}) + "\n")
    qmp_file.flush()


def serve_ready_port():
    """Answer the host's lines on the readiness port as the init does: a hold line (before a save) with
    "sshd held", a resume line with a ready line and a resume report."""
    for line in ready.makefile("rb"):
        words = dict(w.split("=", 1) for w in line.decode().split()[1:])
        if line.startswith(b"CNLAB-HOLD "):
            ready.sendall(f"CNLAB-HELD nonce={words['nonce']} sshd={3 if mode == 'hold-fail' else 0}\n".encode())
        elif line.startswith(b"CNLAB-TAINT "):
            questions.append(words["id"])
            if mode == "taint-die":
                os._exit(1)
            if mode != "taint-silent":
                err = 13 if mode == "taint-err" else 0
                ready.sendall(f"CNLAB-TAINTED id={words['id']}x tainted=1 err=0\r\n"
                              f"CNLAB-TAINTED id={words['id']} tainted={0 if err else 12288 + len(questions)} "
                              f"err={err}\r\n".encode())
        elif line.startswith(b"CNLAB-RESUME "):
            if mode == "restore-after-ssh":
                flag, waited = os.environ["FAKE_QEMU_SSH_FLAG"], time.monotonic()
                while not os.path.exists(flag) and time.monotonic() - waited < 10:
                    time.sleep(0.01)
            reseed = 22 if mode == "restore-bad" else 0
            ready.sendall(f"CNLAB-READY nonce={words['nonce']} cpus=2 modules=none lpj=0 restored=1 clock=0 "
                          f"reseed={reseed} sshd={125 if reseed else 0} rw=0 rt={time.time():.9f} "
                          "build-id=none\r\n".encode())


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


threading.Thread(target=serve_ready_port, daemon=True).start()
for request in requests():
    command = request.get("execute")
    reply = {"return": {}}
    if command == "human-monitor-command":
        forwards += 1
        failed = mode == "collide" and forwards == 1
        reply = {"return": "Could not set up host forwarding rule 'tcp:...'\r\n" if failed else ""}
    if command == "migrate-incoming" and mode == "restore-die":
        print("qemu-system-x86_64: load of migration failed: Invalid argument", file=sys.stderr)
        sys.exit(1)
    if "id" in request:
        reply["id"] = request["id"]
    qmp_file.write(json.dumps(reply) + "\n")
    qmp_file.flush()
    if command == "migrate":
        event("MIGRATION", status="completed")
    if command == "migrate-incoming":
        event("MIGRATION", status="failed" if mode == "restore-fail" else "completed")
    if command == "cont" and not incoming:
        if mode in ("ok", "collide", "hold-fail") or mode.startswith(("restore-", "taint-")):
            ready.sendall(f"CNLAB-READY nonce={nonce} cpus=2 modules=none\r\n".encode())
        elif mode == "lpj":  # the init measured the boot CPU's loops_per_jiffy
            ready.sendall(f"CNLAB-READY nonce={nonce} cpus=2 modules=none lpj=10384536\r\n".encode())
        elif mode == "wrong-nonce":
            ready.sendall(b"CNLAB-READY nonce=0000 cpus=2 modules=none\r\n")
    if command == "quit":
        sys.exit(0)
time.sleep(3600)
