"""Consumer programs under the guest agent (docs/guest-contract.md says what they must do).

``checker`` protocol: started with ``--name NAME --out PATH`` (plus the plan's
argv, which carries ``--groups``); the program creates ``PATH.ready`` once its
socket is bound, may keep ``PATH.live`` (``{"received", "gaps", "enobufs"}``)
up to date for event triggers, and on SIGTERM drains its socket and writes
its JSON report to ``PATH``.  One killed by SIGKILL (a ``consumer-kill``
fault) is started again once with ``--resync``.

``oneshot`` protocol: runs to completion on its own options and prints one
JSON line on stdout.

A program that ends without a report is reported as ``missing`` with its
exit status and the end of its stderr.

A consumer planned with ``start = "fork"`` is not exec'd: the agent forks
itself before any of its threads exist and the child runs the Python program
(:class:`ForkedProgram`), with no new interpreter to start.  Standard library
only.
"""

import json
import os
import signal
import subprocess
import sys
import time
import traceback

import kabi
from forkserver import exit_code, run_program

STDERR_TAIL = 2000


def _tail(data):
    return data.decode(errors="replace")[-STDERR_TAIL:]


class ForkedProgram:
    """A Python program run in a forked child of the agent (``forkserver.run_program``), with a ``Popen``-like
    handle.

    The child gets stdin and stdout on /dev/null, stderr in ``stderr_path``, none of ``close_fds``
    (the agent's own sockets), ``sys.argv`` of the program, and its folder first on ``sys.path``.
    """

    def __init__(self, argv, stderr_path, close_fds=()):
        sys.stdout.flush()
        sys.stderr.flush()
        self.args = list(argv)
        self.returncode = None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns
            code = 1
            try:
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                err = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(err, 2)
                for fd in close_fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                script = argv[1]
                sys.argv = list(argv[1:])
                sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
                run_program(script)
                code = 0
            except SystemExit as exc:
                code = exit_code(exc)
            except BaseException:  # noqa: BLE001 - whatever the program raised goes to its stderr file
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)  # a child's end has no descriptor to wait on here
        return self.returncode

    def send_signal(self, signum):
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class OneShot:
    """A consumer that runs on its own options and prints one JSON line (``protocol = oneshot``)."""

    protocol = "oneshot"

    def __init__(self, label, argv, groups=(), folder="/tmp"):
        self.label = label
        env = dict(os.environ, CNLAB_GROUPS=",".join(map(str, groups)))
        # output to files, not pipes: a program that prints more than a pipe holds must not block
        self.out_path = os.path.join(folder, f"{label}.oneshot.out")
        self.err_path = os.path.join(folder, f"{label}.oneshot.stderr")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)

    def ready(self):
        return True

    def live(self):
        return {}

    def pids(self):
        return [self.proc.pid] if self.proc.poll() is None else []

    def check_killed(self):
        return False

    def exited(self):
        return None  # a one-shot program may end whenever it likes

    def stop(self):
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with open(self.out_path, "rb") as f:
            out = f.read()
        with open(self.err_path, "rb") as f:
            err = f.read()
        try:
            report = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return [{"name": self.label, "missing": True, "status": self.proc.returncode, "stderr": _tail(err)}]
        return [dict(report, name=self.label, protocol="oneshot")]


class CheckerProc:
    """A ``checker``-protocol consumer process (restarted once with ``--resync`` after a SIGKILL)."""

    protocol = "checker"

    def __init__(self, label, argv, listen, folder, fork=False, close_fds=()):
        self.label = label
        self.base = list(argv)
        self.listen = listen
        self.folder = folder
        self.fork = fork
        self.close_fds = tuple(close_fds)
        self.runs = []
        self.restarts = 0
        self.start(False)

    def start(self, resync):
        suffix = f"-r{self.restarts}" if resync else ""
        out = os.path.join(self.folder, f"{self.label}{suffix}.json")
        argv = self.base + ["--name", self.label + suffix, "--out", out]
        if self.listen:
            argv.append("--listen-proc")
        if resync:
            argv.append("--resync")
        if self.fork and not resync:  # a restart happens while the agent has threads: exec then
            self.proc = ForkedProgram(argv, out + ".stderr", self.close_fds)
        else:
            with open(out + ".stderr", "wb") as err:
                self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        self.runs.append({"out": out, "proc": self.proc, "resync": resync})

    def ready(self):
        return os.path.exists(self.runs[-1]["out"] + ".ready")

    def exited(self):
        """Ended before binding (its exit status, else None)."""
        return None if self.ready() else self.proc.poll()

    def live(self):
        """The latest live counters of every run so far, summed ({} before any)."""
        total = {}
        for run in self.runs:
            try:
                with open(run["out"] + ".live") as f:
                    counts = json.load(f)
            except (OSError, ValueError):
                continue
            for key, value in counts.items():
                if isinstance(value, int):
                    total[key] = total.get(key, 0) + value
        return total

    def pids(self):
        return [run["proc"].pid for run in self.runs if run["proc"].poll() is None]

    def check_killed(self):
        code = self.proc.poll()
        if code == -signal.SIGKILL and self.restarts < 1:
            self.restarts += 1
            self.start(True)
            return True
        return False

    def stop(self):
        kabi.wait_until(lambda: self.ready() or self.proc.poll() is not None, 30)  # a restarted one may be starting
        for run in self.runs:
            if run["proc"].poll() is None:
                run["proc"].send_signal(signal.SIGTERM)
        reports = []
        for run in self.runs:
            try:
                run["proc"].wait(timeout=30)
            except subprocess.TimeoutExpired:
                run["proc"].kill()
                run["proc"].wait()
            try:
                with open(run["out"] + ".stderr", "rb") as f:
                    err = f.read()
            except OSError:
                err = b""
            if os.path.exists(run["out"]):
                try:
                    with open(run["out"]) as f:
                        report = json.load(f)
                    if not isinstance(report, dict):
                        raise ValueError(f"a JSON {type(report).__name__}, not an object")
                    reports.append(report)
                except (OSError, ValueError) as exc:
                    reports.append({"name": self.label, "missing": True, "status": run["proc"].returncode,
                                    "stderr": f"its report {run['out']} is not a JSON object ({exc}); "
                                              + _tail(err)})
            else:
                reports.append({"name": self.label, "missing": True, "status": run["proc"].returncode,
                                "stderr": _tail(err)})
        return reports


def start_consumers(plan, folder, close_fds=()):
    """Every consumer instance of the plan, started (forked ones get none of ``close_fds``)."""
    consumers = []
    for c in plan.get("consumers", []):
        instances = c.get("instances", 1)
        for i in range(instances):
            label = c["label"] if instances == 1 else f"{c['label']}-{i}"
            if c.get("protocol") == "oneshot":
                consumers.append(OneShot(label, c["argv"], c.get("groups", ()), folder))
            else:
                consumers.append(CheckerProc(label, c["argv"], c.get("listen", False), folder,
                                             fork=c.get("start") == "fork", close_fds=close_fds))
    return consumers
