"""Detached guest jobs (lab.guest.job + guestside/job.py), with this host as the "guest".

The SSH server is the in-process paramiko server of test_ssh.py, which runs
commands with the host's shell, so job.py really forks, detaches and writes
its files here.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from lab.guest.job import _JOB_PROGRAM, run_job
from lab.guest.ssh import SSHSession
from lab.image.keys import ensure_keys

from .test_ssh import FakeGuestSSH


@pytest.fixture
def guest(tmp_path):
    keys = ensure_keys(tmp_path / "keys")
    server = FakeGuestSSH(keys)
    ssh = SSHSession("127.0.0.1", server.port, keys.client_key, keys.known_hosts, connect_timeout=5)
    ssh.connect()
    yield SimpleNamespace(ssh=ssh, spec=SimpleNamespace(name="fake"), alive=lambda: True, server=server)
    ssh.close()
    server.close()


def test_job_returns_status_output_and_reads_its_stdin(guest, tmp_path):
    result = run_job(guest, ["sh", "-c", "cat; echo err >&2; exit 7"], stdin=b"plan\n", timeout=30,
                     root=str(tmp_path / "jobs"))
    assert (result.exit_status, result.stdout, result.stderr) == (7, b"plan\n", b"err\n")
    assert result.extra["reconnects"] == 0
    assert not list((tmp_path / "jobs").iterdir()), "the job folder was not removed"


def test_job_survives_the_connection_dropping_while_it_runs(guest, tmp_path):
    def drop_soon():
        time.sleep(1.0)  # the job (2 s) is running by then
        guest.server.drop_connections()

    threading.Thread(target=drop_soon, daemon=True).start()
    result = run_job(guest, ["sh", "-c", "sleep 2; echo done"], timeout=60, root=str(tmp_path / "jobs"))
    assert (result.exit_status, result.stdout) == (0, b"done\n")
    assert result.extra["reconnects"] >= 1


def test_job_past_its_deadline_is_killed_and_marked(guest, tmp_path):
    result = run_job(guest, ["sleep", "600"], timeout=1.5, root=str(tmp_path / "jobs"))
    assert result.exit_status == -1 and result.extra["timed_out"]


def test_starting_twice_with_the_same_folder_starts_one_job(tmp_path):
    folder = str(tmp_path / "job")
    argv = [sys.executable, "-c", _JOB_PROGRAM, "start", folder, "--", "sh", "-c", "echo x >> " + str(tmp_path / "n")]
    first = subprocess.run(argv, input=b"", capture_output=True, check=True).stdout
    second = subprocess.run(argv, input=b"", capture_output=True, check=True).stdout
    assert first == second
    waited = subprocess.run([sys.executable, "-c", _JOB_PROGRAM, "wait", folder, "10"], capture_output=True)
    assert waited.returncode == 0 and waited.stdout.strip() == b"0"
    assert (tmp_path / "n").read_text() == "x\n"
