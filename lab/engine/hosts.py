"""Other hosts for one run: what each must agree on, how cnlab reaches them, and checking them first.

A run over several hosts (``cnlab run --hosts``, or pytest with ``-d --tx ssh=...``) rides pytest-xdist:
each host runs remote pytest workers on an execnet SSH gateway, and each worker runs its own guests from
that host's own cache.  Before a host gets work, cnlab asks it (one small program run over the gateway with
the host's Python) for its :func:`host_facts`, and refuses it when :func:`mismatch` finds a reason:
another cnlab version, other module sources, no QEMU.

SSH is OpenSSH's client, as execnet runs it, with a config cnlab writes (:func:`write_ssh_config`): host keys
must already be in the known-hosts file (``StrictHostKeyChecking yes``: no host is trusted on first use, as
guests' keys are pinned), no password prompts (``BatchMode``), and a dead link noticed within 15 s
(``ServerAliveInterval 5``, ``ServerAliveCountMax 3``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from lab import __version__
from lab.errors import UsageError
from lab.guest.accel import qemu_version
from lab.host.cache import cache_root, hash_tree

__all__ = ["host_facts", "mismatch", "write_ssh_config", "xspec", "probe_host", "PROBE_SOURCE", "host_label"]

#: Run on the remote host's Python over the execnet gateway: sends back its facts as JSON.
PROBE_SOURCE = """
import json
from lab.engine.hosts import host_facts
channel.send(json.dumps(host_facts()))
"""


def host_facts() -> dict:
    """What this host is, as a remote run compares it: cnlab version, module source hash, QEMU, accelerator,
    cores, hostname (standard library and cheap: nothing is built or booted)."""
    from lab.image.module import SOURCE_PATTERNS, kmod_dir

    qemu = shutil.which("qemu-system-x86_64")
    if not os.path.exists("/dev/kvm"):
        accel = "tcg (no /dev/kvm)"
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        accel = "tcg (/dev/kvm not readable and writable)"
    else:
        try:  # the host's last KVM test boot (lab.guest.accel.choose_accel), if it made one
            verdict = json.loads((cache_root() / "accel.json").read_text())
            accel = "kvm" if verdict["kvm_works"] else f"tcg ({verdict['reason']})"
        except (OSError, ValueError, KeyError, TypeError):
            accel = "kvm or tcg (/dev/kvm opens; no test boot yet)"
    return {"version": __version__, "module_source_hash": hash_tree(kmod_dir(), SOURCE_PATTERNS),
            "qemu": qemu_version(qemu) if qemu else "", "accel": accel,
            "cpus": os.cpu_count() or 1, "hostname": socket.gethostname()}


def mismatch(local: dict, remote: dict) -> str | None:
    """Why a host with ``remote`` facts cannot run this machine's run (``local``), or None."""
    if remote.get("version") != local.get("version"):
        return f"cnlab {remote.get('version')} is not the local {local.get('version')}"
    if remote.get("module_source_hash") != local.get("module_source_hash"):
        return (f"module source hash {remote.get('module_source_hash')} is not the local "
                f"{local.get('module_source_hash')} (its kmod/ differs)")
    if not remote.get("qemu"):
        return "no qemu-system-x86_64 (install qemu-system-x86)"
    return None


def host_label(ssh_target: str) -> str:
    """How records name a host: the ssh target as given (``root@h1``)."""
    return ssh_target


def write_ssh_config(path: Path, known_hosts: Path | None = None, user_config: Path | None = None) -> Path:
    """The ssh config execnet's ssh uses: pinned host keys, no prompts, dead links noticed; then the user's.

    ssh takes the first value it reads for an option, so these come before the user's ``Include``.
    """
    lines = ["StrictHostKeyChecking yes", "BatchMode yes", "ServerAliveInterval 5", "ServerAliveCountMax 3",
             "ConnectTimeout 15"]
    if known_hosts is not None:
        if not known_hosts.is_file():
            raise UsageError(f"--known-hosts {known_hosts}: no such file")
        lines.append(f"UserKnownHostsFile {known_hosts.resolve()}")
    if user_config is not None:
        if not user_config.is_file():
            raise UsageError(f"--ssh-config {user_config}: no such file")
        lines.append(f"Include {user_config.resolve()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def xspec(target: str, ssh_config: Path, python: str, workers: int = 1) -> str:
    """The pytest-xdist ``--tx`` for ``workers`` workers on ``target`` (``user@host``)."""
    if any(c.isspace() for c in target) or "//" in target or not target:
        raise UsageError(f"--hosts: not a host: {target!r}")
    spec = f"ssh_config={ssh_config}//ssh={target}//python={python}"
    return f"{workers}*{spec}" if workers > 1 else spec


def probe_host(target: str, ssh_config: Path, python: str, timeout: float = 60.0) -> dict:
    """The facts of ``target``, asked over an execnet SSH gateway with its ``python``.

    :raises UsageError: the host cannot be reached, or cnlab cannot be imported there (one line).
    """
    import execnet

    try:
        gateway = execnet.makegateway(f"ssh_config={ssh_config}//ssh={target}//python={python}")
    except (execnet.HostNotFound, OSError, EOFError) as exc:
        raise UsageError(f"host {target}: cannot start {python} over ssh ({type(exc).__name__}: "
                         f"{str(exc).strip() or 'ssh failed'}; is its host key in the known hosts?)") from None
    try:
        channel = gateway.remote_exec(PROBE_SOURCE)
        return json.loads(channel.receive(timeout))
    except (execnet.RemoteError, execnet.TimeoutError, EOFError, OSError) as exc:
        last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        raise UsageError(f"host {target}: cnlab does not answer with {python} ({last[0]})") from None
    finally:
        gateway.exit()
