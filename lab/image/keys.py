"""Per-lab SSH keys: a client key, a guest host key and the pinned known_hosts.

Generated once per lab (cache directory), mode 0600, never committed.  The
guest host key reaches the guest through the per-boot initramfs; the host
side pins it and refuses anything else (paramiko ``RejectPolicy``).

Both keys are ECDSA on P-256, not Ed25519: the guest's sshd signs and
verifies Ed25519 with OpenSSH's portable reference code, which under TCG
took 31 ms to sign and 69 ms to verify on a warm guest, while OpenSSL's
P-256 does both in a few.  Every SSH connect pays those in the guest,
the first one after a restore at TCG's cold-translation cost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

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
        return self.directory / "id_ecdsa"

    @property
    def client_pub(self) -> Path:
        return self.directory / "id_ecdsa.pub"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ecdsa_key"

    @property
    def host_pub(self) -> Path:
        return self.directory / "ssh_host_ecdsa_key.pub"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _new_keypair(private: Path, public: Path, comment: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
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


def _complete(keys: LabKeys) -> bool:
    """Whether ``keys`` holds both key pairs and known_hosts pins this host key (a lab made with
    another key type gets a new set)."""
    try:
        host_pub = keys.host_pub.read_text().split()[:2]
        pinned = keys.known_hosts.read_text().split()
    except OSError:
        return False
    return keys.client_key.exists() and keys.client_pub.exists() and keys.host_key.exists() \
        and pinned[:1] == [KNOWN_HOSTS_NAME] and pinned[1:3] == host_pub


def ensure_keys(directory: Path) -> LabKeys:
    """Create the lab's keys if they do not exist yet; return their paths."""
    keys = LabKeys(directory)
    if _complete(keys):
        return keys
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    with file_lock(directory / ".lock"):
        if _complete(keys):
            return keys
        _new_keypair(keys.client_key, keys.client_pub, "cnlab-client")
        host_pub = _new_keypair(keys.host_key, keys.host_pub, "cnlab-guest")
        tmp = keys.known_hosts.with_suffix(".tmp")
        tmp.write_bytes(KNOWN_HOSTS_NAME.encode() + b" " + host_pub + b"\n")
        os.chmod(tmp, 0o600)
        tmp.rename(keys.known_hosts)
    return keys
