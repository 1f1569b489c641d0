"""Test hosts for multi-host runs: network namespaces on this machine, each with its own sshd.

:class:`HostNet` makes a *client* network namespace (where the orchestrator's ssh runs) and, per host, a
process in its own network, mount and PID namespaces (``host_init.py`` is its PID 1) joined to the client by
a veth pair: host *i* is ``10.213.i.2``, the client's end ``10.213.i.1``.  No address is added to the
machine's own namespace, so every packet stays on those links.  Each host has:

* its own sshd (OpenSSH's, unpacked from Debian's ``openssh-server`` package into the cache once: nothing is
  installed on the machine and no service starts), listening on port 22 of its veth address only, with a host
  key made for this net, pinned in the client's ``known_hosts`` (``StrictHostKeyChecking yes``);
* its own home (root's home in the host's own ``/etc/passwd``) and so its own ``~/.cache/cnlab``,
  seeded with hard links to the local cache's artefacts (what shipping the image to a new host would do;
  guests never write them: ``snapshot=on``);
* optionally other files bound over the repository's (a ``kmod/`` with different sources).

Killing a host kills its ``unshare`` process; ``--kill-child`` takes the host's PID 1 and with it every
process of the host (sshd, the pytest worker, QEMU).  Needs root.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Cache entries a host does not get: locks (its own), logs, another engineer's guest snapshots, tools.
_NOT_SEEDED = {"locks", "logs", "snapshots", "tools"}
_SSHD_PACKAGES = ("openssh-server", "libwrap0")
_READY_TIMEOUT = 60


def sshd_kit(cache: Path) -> Path:
    """A folder with Debian's sshd and the one library it needs that the machine lacks (libwrap0), unpacked
    from the packages (``apt-get download``, ``dpkg-deb -x``) once; returns the folder."""
    kit = cache / "tools" / "sshd"
    if (kit / "usr" / "sbin" / "sshd").exists():
        return kit
    staging = cache / "tools" / "sshd.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "debs").mkdir(parents=True)
    subprocess.run(["apt-get", "download", *_SSHD_PACKAGES], cwd=staging / "debs", check=True,
                   capture_output=True)
    for deb in sorted((staging / "debs").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(staging / "root")], check=True)
    shutil.rmtree(kit, ignore_errors=True)
    (staging / "root").rename(kit)
    shutil.rmtree(staging)
    return kit


def seed_cache(source: Path, target: Path) -> None:
    """``target`` gets hard links to ``source``'s artefacts and copies of its small records."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.name in _NOT_SEEDED or entry.name.endswith((".partial", ".tmp")):
            continue
        if entry.is_dir():
            subprocess.run(["cp", "-al", str(entry), str(target / entry.name)], check=True)
        else:
            shutil.copy2(entry, target / entry.name)


@dataclass
class NetHost:
    """One host: its alias in the client's ssh config (``h1``...), its address and its processes."""

    name: str
    address: str
    folder: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Every process of the host dies at once (its sshd, its workers, their guests)."""
        if self.alive:
            self.process.kill()
        self.process.wait(30)

    @property
    def pid(self) -> int:
        return self.process.pid


class HostNet:
    """The client namespace and its hosts; :meth:`close` (or the end of the ``with``) kills them all."""

    def __init__(self, folder: Path, cache: Path) -> None:
        self.folder = folder
        self.cache = cache
        self.hosts: list[NetHost] = []
        folder.mkdir(parents=True, exist_ok=True)
        self.kit = sshd_kit(cache)
        self.client_key = folder / "client_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cnlab-test-client", "-f",
                        str(self.client_key)], check=True)
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text("")
        self.ssh_config = folder / "ssh_config"
        self._write_ssh_config()
        # the client: a network namespace with only loopback until hosts are linked in
        self.client = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec cat"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.client.stdout.readline().strip() != "up":
            raise RuntimeError("the client namespace did not come up")

    def __enter__(self) -> HostNet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- hosts
    def add_host(self, binds: list[tuple[Path, Path]] = ()) -> NetHost:
        """A new host (``h1``, ``h2``... at ``10.213.N.2``), ready when this returns: its sshd listens."""
        number = len(self.hosts) + 1
        name, address = f"h{number}", f"10.213.{number}.2"
        folder = self.folder / name
        home = folder / "home"
        home.mkdir(parents=True)
        seed_cache(self.cache, home / ".cache" / "cnlab")
        host_key = folder / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(host_key)], check=True)
        passwd = folder / "passwd"  # root's home is the host's own; sshd's privilege-separation user exists
        lines = [":".join(f[:5] + [str(home)] + f[6:]) if f[0] == "root" else ":".join(f)
                 for f in (line.split(":") for line in Path("/etc/passwd").read_text().splitlines())]
        passwd.write_text("\n".join(lines + ["sshd:x:64999:65534::/run/sshd:/usr/sbin/nologin", ""]))
        (folder / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        (folder / "sshd_config").write_text("\n".join([
            f"ListenAddress {address}:22", f"HostKey {host_key}", "PidFile none",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "PrintMotd no", "PrintLastLog no", "LogLevel INFO", ""]))
        config = {"passwd": str(passwd), "binds": [[str(s), str(t)] for s, t in binds],
                  "address": address, "ifname": "eth0", "sshd": str(self.kit / "usr" / "sbin" / "sshd"),
                  "sshd_config": str(folder / "sshd_config"), "log": str(folder / "sshd.log"),
                  "ld_library_path": str(self.kit / "usr" / "lib" / "x86_64-linux-gnu")}
        (folder / "host.json").write_text(json.dumps(config))
        process = subprocess.Popen(["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                                    sys.executable, str(HERE / "host_init.py"), str(folder / "host.json")],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        host = NetHost(name, address, folder, process)
        self.hosts.append(host)
        self._expect(host, "namespaces")
        subprocess.run(["ip", "link", "add", "name", f"to-{name}", "netns", str(self.client.pid), "type", "veth",
                        "peer", "name", "eth0", "netns", str(process.pid)], check=True)
        self.in_client(["ip", "addr", "add", f"10.213.{number}.1/24", "dev", f"to-{name}"])
        self.in_client(["ip", "link", "set", f"to-{name}", "up"])
        process.stdin.write("go\n")
        process.stdin.flush()
        self._expect(host, "ready")
        public = Path(f"{host_key}.pub").read_text().split()[:2]
        with open(self.known_hosts, "a") as handle:
            handle.write(f"cnlab-test-{name} {' '.join(public)}\n")
        self._write_ssh_config()
        return host

    def _expect(self, host: NetHost, word: str) -> None:
        line = host.process.stdout.readline().strip()
        if line != word:
            log = host.folder / "sshd.log"
            raise RuntimeError(f"test host {host.name} did not say {word!r} (said {line!r}; sshd log: "
                               f"{log.read_text()[-500:] if log.exists() else 'none'})")

    def _write_ssh_config(self) -> None:
        lines = ["User root", f"IdentityFile {self.client_key}", "IdentitiesOnly yes",
                 f"UserKnownHostsFile {self.known_hosts}", "StrictHostKeyChecking yes", "BatchMode yes",
                 "ConnectTimeout 10", ""]
        for host in self.hosts:
            lines += [f"Host {host.name}", f"  HostName {host.address}", f"  HostKeyAlias cnlab-test-{host.name}", ""]
        self.ssh_config.write_text("\n".join(lines))

    # ------------------------------------------------------------------ client
    def client_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run in the client's network namespace."""
        return ["nsenter", f"--net=/proc/{self.client.pid}/ns/net", "--", *argv]

    def in_client(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.client_argv(argv), check=kwargs.pop("check", True), **kwargs)

    def close(self) -> None:
        for host in self.hosts:
            host.kill()
            host.process.stdin.close()
            host.process.stdout.close()
        if self.client.poll() is None:
            self.client.stdin.close()
            self.client.wait(30)
            self.client.stdout.close()
