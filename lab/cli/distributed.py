"""One run over several hosts, riding pytest-xdist: ``cnlab run --hosts`` and the pytest entry
(``pytest -d --tx ssh=... --cnlab-results FILE``).

cnlab does not schedule hosts itself.  Each host runs pytest-xdist workers on an execnet SSH gateway;
xdist hands out the scenario items (``lab.pytest_plugin`` collects them from ``--cnlab-run``) and each worker
runs them on its own guests (:class:`lab.engine.slot.GuestSlot`) from its host's own cache.  What cnlab adds,
as the pytest plugin :class:`DistributedRun` on the controller:

* every new SSH gateway is checked before it gets work (:func:`lab.engine.hosts.mismatch`); a mismatched host
  ends the session with one line (exit status 2);
* a worker whose host died or dropped off is not replaced on that host when it cannot be reached, and the
  scenario it was running goes back to the queue once (``pytest_handlecrashitem``), reported as ``RERUN``
  rather than failed; xdist already requeues the items it had not started;
* every scenario record is written once to the results file (``--cnlab-results``), naming the host it ran on.

``cnlab run --hosts`` (:func:`run_on_hosts`) checks every host first, runs the session, and runs again on
the surviving hosts whatever a lost host left unfinished at the end (xdist cannot requeue onto workers it
has already told to finish), so the results hold every scenario exactly once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.engine.events import RunEvent
from lab.engine.hosts import PROBE_SOURCE, host_facts, mismatch, probe_host, write_ssh_config, xspec
from lab.engine.results import ResultsWriter
from lab.engine.run import RunOutcome
from lab.engine.timings import expected_durations
from lab.errors import LabError, UsageError
from lab.plugin.model import Scenario, ScenarioResult

__all__ = ["DistributedRun", "run_on_hosts", "run_spec", "node_host"]


def node_host(node: object | None) -> str:
    """The host an xdist node runs on: its ssh target, or this machine's name for local workers."""
    spec = getattr(getattr(node, "gateway", None), "spec", None)
    ssh = getattr(spec, "ssh", None)
    return ssh.split()[-1] if ssh else socket.gethostname()


def run_spec(scenarios: list[Scenario], plugin_options, lab_options: dict) -> str:
    """The ``--cnlab-run`` value: the scenarios (file texts, or matrix names), in dispatch order, and what
    each worker's lab and plugin manager need.  Remote workers re-read it; nothing has to lie at the same path
    on the hosts except plugin files named by the plugin options."""
    items = []
    for scenario in scenarios:
        source = Path(scenario.source)
        if scenario.source.startswith("<matrix:"):
            items.append({"name": scenario.name, "matrix": True})
        else:
            items.append({"name": scenario.name, "file": source.name, "text": source.read_text()})
    plugins = {"config": str(plugin_options.config_path) if plugin_options.config_path else None,
               "plugin_args": list(plugin_options.plugin_args),
               "plugins_dirs": [str(p) for p in plugin_options.plugins_dirs],
               "packages": list(plugin_options.packages)}
    return json.dumps({"scenarios": items, "plugins": plugins, "lab": lab_options})


class DistributedRun:
    """The controller's side of a multi-host session (a pytest plugin object)."""

    def __init__(self, config: pytest.Config, on_event: Callable[[RunEvent], None] | None = None,
                 expected: list[str] | None = None, results: Path | None = None) -> None:
        self.config = config
        self.on_event = on_event or (lambda event: None)
        self.expected = list(expected or [])
        path = results or config.getoption("cnlab_results", None)
        self.writer = ResultsWriter(Path(path)) if path else None
        self.records: dict[str, ScenarioResult] = {}
        self.lost: dict[str, str] = {}  # scenario -> the host it was lost on
        self.lost_hosts: dict[str, str] = {}  # host -> why
        self.refused: str | None = None
        self.hosts: list[str] = []
        self._local: dict | None = None
        self._started = time.monotonic()

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _worker(self, host: str) -> int:
        if host not in self.hosts:
            self.hosts.append(host)
        return self.hosts.index(host) + 1

    # ------------------------------------------------------------ hosts
    @pytest.hookimpl
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        dsession = session.config.pluginmanager.getplugin("dsession")
        if dsession is None:
            return
        clone = dsession._clone_node  # xdist replaces a crashed worker on the same spec

        def clone_reachable(node):
            host = node_host(node)
            try:
                return clone(node)
            except Exception as exc:  # noqa: BLE001 - execnet raises HostNotFound, EOFError, OSError...
                self.lost_hosts.setdefault(host, f"{type(exc).__name__}")
                self.on_event(RunEvent("note", self._elapsed(), detail=f"host {host} cannot be reached "
                                                                      f"({type(exc).__name__}); not replaced"))
                return None

        dsession._clone_node = clone_reachable

    @pytest.hookimpl
    def pytest_xdist_newgateway(self, gateway) -> None:
        """Check an SSH host before it gets work: the same cnlab and module sources, QEMU there."""
        target = getattr(gateway.spec, "ssh", None)
        if not target:
            return
        host = target.split()[-1]
        if self._local is None:
            self._local = host_facts()
        try:
            facts = json.loads(gateway.remote_exec(PROBE_SOURCE).receive(60))
        except Exception as exc:  # noqa: BLE001 - a remote ImportError arrives as execnet.RemoteError
            reason = f"cnlab does not answer there ({str(exc).strip().splitlines()[-1:] or type(exc).__name__})"
        else:
            reason = mismatch(self._local, facts)
        if reason:
            self.refused = f"host {host}: {reason}"
            pytest.exit(f"cnlab: {self.refused}", returncode=2)

    @pytest.hookimpl
    def pytest_testnodedown(self, node, error) -> None:
        if error:
            host = node_host(node)
            self.lost_hosts.setdefault(host, str(error).strip().splitlines()[-1][:200] if str(error) else "down")
            self.on_event(RunEvent("note", self._elapsed(), detail=f"host {host}: worker {node.gateway.id} went "
                                                                  f"down ({self.lost_hosts[host]})"))

    @pytest.hookimpl
    def pytest_handlecrashitem(self, crashitem: str, report, sched) -> None:
        """The item a lost worker was running goes back to the queue, once; it is not a failure."""
        if crashitem in self.lost:
            return
        host = node_host(getattr(report, "node", None))
        self.lost[crashitem] = host
        try:
            sched.mark_test_pending(crashitem)
        except NotImplementedError:  # --dist loadscope/loadgroup cannot requeue one item
            return
        report.outcome = "rerun"
        self.on_event(RunEvent("retry", self._elapsed(), self._worker(host), crashitem.rpartition("::")[2],
                               f"lost with host {host}; runs again on another worker"))

    @pytest.hookimpl
    def pytest_report_teststatus(self, report):
        if getattr(report, "outcome", None) == "rerun":
            return "rerun", "R", ("RERUN", {"yellow": True})
        return None

    # ---------------------------------------------------------- results
    @pytest.hookimpl
    def pytest_runtest_logreport(self, report) -> None:
        data = dict(report.user_properties).get("cnlab_record") if report.when == "call" else None
        if data is None:
            return
        record = ScenarioResult.from_json(data)
        if record.scenario in self.records:
            return  # it finished on a host that was lost afterwards, and ran again: keep the first
        host = node_host(getattr(report, "node", None))
        changes: dict = {"env": {**record.env, "host": host}}
        nodeid_lost = [n for n in self.lost if n.rpartition("::")[2] == record.scenario]
        if nodeid_lost:
            changes.update(retried=True, attempt=max(record.attempt, 2),
                           data={**record.data, "hosts": {"lost_on": self.lost[nodeid_lost[0]]}})
        record = dataclasses.replace(record, worker=self._worker(host), **changes)
        self.records[record.scenario] = record
        if self.writer is not None:
            self.writer.write(record.to_json())
        left = len([n for n in self.expected if n not in self.records])
        self.on_event(RunEvent("result", self._elapsed(), record.worker, record.scenario, record.status,
                               done=len(self.records), failed=sum(1 for r in self.records.values() if not r.passed),
                               left=left, outcome="flaky" if record.flaky else record.status))

    @pytest.hookimpl
    def pytest_unconfigure(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------- cnlab run --hosts
def _check_hosts(hosts: list[str], ssh_config: Path, python: str, on_event) -> None:
    local = host_facts()
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        facts = dict(zip(hosts, pool.map(lambda h: probe_host(h, ssh_config, python), hosts), strict=True))
    for host in hosts:
        reason = mismatch(local, facts[host])
        if reason:
            raise UsageError(f"host {host}: {reason}")
        on_event(RunEvent("note", 0.0, detail=f"host {host}: cnlab {facts[host]['version']}, module "
                                              f"{facts[host]['module_source_hash']}, {facts[host]['accel']}, "
                                              f"{facts[host]['cpus']} cores"))


def run_on_hosts(hosts: list[str], scenarios: list[Scenario], plugin_options, lab, out_dir: Path,
                 json_path: Path | None, ssh_config: Path | None, known_hosts: Path | None, python: str,
                 jobs_per_host: int, on_event: Callable[[RunEvent], None]) -> RunOutcome:
    """Run ``scenarios`` on ``hosts`` (``user@host``) through pytest-xdist; every record names its host.

    :raises UsageError: a host cannot be reached or does not match this machine (nothing has run then).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = json_path or out_dir / "results.jsonl"
    config = write_ssh_config(out_dir / "ssh_config", known_hosts, ssh_config)
    _check_hosts(hosts, config, python, on_event)
    expected = expected_durations(lab.cache)
    ordered = sorted(scenarios, key=lambda s: -expected(s))  # longest first: the tail is short
    lab_options = {"accel": lab.options.accel, "tcg_threads": lab.options.tcg_threads,
                   "guests_at_once": jobs_per_host}
    on_event(RunEvent("start", 0.0, detail=f"{len(scenarios)} scenarios on {len(hosts)} host(s) x {jobs_per_host} "
                                           f"guest(s): {', '.join(hosts)}", left=len(scenarios)))
    records: dict[str, ScenarioResult] = {}
    alive = list(hosts)
    lost: dict[str, str] = {}
    started = time.monotonic()
    while alive:
        todo = [s for s in ordered if s.name not in records]
        if not todo:
            break
        # The controller and workers read no pytest config and run no test code of the folder they start in.
        args = ["--config-file=/dev/null", "-p", "no:cacheprovider", "-p", "no:terminal", "-p", "xdist",
                "--assert=plain", "--noconftest",
                "-d", "--dist", "load",
                "--maxschedchunk=2", f"--cnlab-run={run_spec(todo, plugin_options, lab_options)}",
                f"--rootdir={out_dir}"]
        for host in alive:
            args += ["--tx", xspec(host, config, python, jobs_per_host)]
        session = _Session(on_event, [s.name for s in scenarios], json_path, records, started, hosts)
        status = pytest.main(args, plugins=[session])
        if session.run is not None:
            records.update(session.run.records)
            lost.update(session.run.lost_hosts)
            if session.run.refused:
                raise UsageError(session.run.refused)
        alive = [h for h in alive if h not in lost]
        left = [s.name for s in ordered if s.name not in records]
        if status not in (0, 1) and not left:
            break
        if left and alive:
            on_event(RunEvent("note", time.monotonic() - started,
                              detail=f"{len(left)} scenario(s) unfinished after losing {', '.join(lost) or 'a worker'}"
                                     f"; running them on {', '.join(alive)}"))
        elif left and status not in (0, 1) and not lost:
            raise LabError(f"cnlab run --hosts: pytest ended with status {status} and {len(left)} scenario(s) "
                           "unfinished")
    never = [s for s in scenarios if s.name not in records]
    with ResultsWriter(json_path) as writer:
        for scenario in never:
            record = ScenarioResult(scenario.name, scenario.source, status="not run",
                                    error=f"no host ran it (lost: {', '.join(lost) or 'none'})",
                                    guest={"cpus": scenario.cpus, "memory": scenario.memory,
                                           "cmdline": list(scenario.cmdline)})
            writer.write(record.to_json())
            records[scenario.name] = record
    environment = {**host_facts(), "hosts": ", ".join(hosts), "lost_hosts": ", ".join(lost)}
    return RunOutcome([records[s.name] for s in scenarios], environment, tuple(s.name for s in never), json_path)


class _Session:
    """Registers the :class:`DistributedRun` of one pytest session of ``cnlab run --hosts``."""

    def __init__(self, on_event, expected: list[str], json_path: Path, done: dict, started: float,
                 hosts: list[str]) -> None:
        self.hosts = hosts
        self.on_event = on_event
        self.expected = expected
        self.json_path = json_path
        self.done = done
        self.started = started
        self.run: DistributedRun | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        self.run = DistributedRun(config, self.on_event, self.expected, self.json_path)
        self.run.records.update(self.done)  # a later round: what earlier rounds finished counts as done
        self.run._started = self.started
        self.run.hosts = list(self.hosts)  # "guest N" in the progress lines is host N of --hosts
        config.pluginmanager.register(self.run, "cnlab-distributed")


def remote_python_default() -> str:
    """The Python a host runs cnlab with unless told: the same path as this one (a fleet set up alike)."""
    return sys.executable
