"""Per-lab SSH keys: a client key, a guest host key and the pinned known_hosts.

Generated once per lab (cache directory), mode 0600, never committed.  The
guest host key reaches the guest through the per-boot initramfs; the host
side pins it and refuses anything else (paramiko ``RejectPolicy``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lab.host.cache import file_lock

__all__ = ["LabKeys", "ensure_keys", "KNOWN_HOSTS_NAME"]

#: The name the guest's host key is pinned under in known_hosts.
KNOWN_HOSTS_NAME = "cnlab-guest"


@dataclass(frozen=True)
class LabKeys:
    """Paths of one lab's key material."""

    directory: Path

    @property
    def client_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def client_pub(self) -> Path:
        return self.directory / "id_ed25519.pub"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def host_pub(self) -> Path:
        return self.directory / "ssh_host_ed25519_key.pub"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _new_keypair(private: Path, public: Path, comment: str) -> bytes:
    key = Ed25519PrivateKey.generate()
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public.write_bytes(pub + b" " + comment.encode() + b"\n")
    return pub


def ensure_keys(directory: Path) -> LabKeys:
    """Create the lab's keys if they do not exist yet; return their paths."""
    keys = LabKeys(directory)
    if keys.known_hosts.exists():
        return keys
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    with file_lock(directory / ".lock"):
        if keys.known_hosts.exists():
            return keys
        _new_keypair(keys.client_key, keys.client_pub, "cnlab-client")
        host_pub = _new_keypair(keys.host_key, keys.host_pub, "cnlab-guest")
        tmp = keys.known_hosts.with_suffix(".tmp")
        tmp.write_bytes(KNOWN_HOSTS_NAME.encode() + b" " + host_pub + b"\n")
        os.chmod(tmp, 0o600)
        tmp.rename(keys.known_hosts)
    return keys
