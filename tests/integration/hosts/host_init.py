"""PID 1 of one test host: its own mount, PID and network namespace, started by ``unshare`` (testhosts.py).

Mounts a tmpfs on /run, a passwd in which root's home is the host's own folder (so its cache is its
own ``~/.cache/cnlab``) and which knows sshd's privilege-separation user, and the binds it is given (a
different ``kmod/`` for a host with other module sources).  Prints ``namespaces`` and waits for one line
on stdin (the parent moves the host's end of the veth pair in meanwhile), sets the veth address, starts
its sshd and prints ``ready`` once sshd says it listens.  Then it reaps children until sshd exits;
killing it (the parent kills ``unshare``, whose ``--kill-child`` kills this process) ends every process
of the host with it.

Standard library only; arguments: the host's JSON config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True)


def main(config_path: str) -> int:
    with open(config_path) as handle:
        cfg = json.load(handle)
    _run("mount", "--make-rprivate", "/")
    _run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run")
    os.makedirs("/run/sshd", mode=0o755)
    _run("mount", "--bind", cfg["passwd"], "/etc/passwd")
    for source, target in cfg.get("binds", []):
        _run("mount", "--bind", source, target)
    _run("ip", "link", "set", "lo", "up")
    print("namespaces", flush=True)
    if not sys.stdin.readline():
        return 1
    _run("ip", "addr", "add", f"{cfg['address']}/24", "dev", cfg["ifname"])
    _run("ip", "link", "set", cfg["ifname"], "up")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_LIBRARY_PATH": cfg["ld_library_path"]}
    sshd = subprocess.Popen([cfg["sshd"], "-D", "-e", "-f", cfg["sshd_config"]], env=env, stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    log = open(cfg["log"], "a", buffering=1)

    def copy_log() -> None:
        ready = False
        for line in sshd.stderr:
            log.write(line)
            if not ready and "Server listening on" in line:
                ready = True
                print("ready", flush=True)

    threading.Thread(target=copy_log, daemon=True).start()
    while True:  # PID 1 reaps every orphan of the host
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if pid == sshd.pid:
            log.write(f"host_init: sshd ended (status {status})\n")
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
