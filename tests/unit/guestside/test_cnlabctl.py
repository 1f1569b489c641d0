"""cnlabctl: argument parsing, the requests it sends and the text it prints, against a fake module.

The fake module answers on the other end of a datagram socket pair with the module's own wire format
(``kabi``), so cnlabctl's real ``CtlClient`` encodes every request and decodes every reply.  The output
formats checked here are the ones docs/cnlabctl.md shows.
"""

from __future__ import annotations

import errno
import io
import json
import socket
import threading

import pytest

from .guest_modules import load_guest_module

cnlabctl = load_guest_module("cnlabctl")
kabi = cnlabctl.kabi


def cbus(cpu, **counts):
    base = dict.fromkeys(("inserted", "sent", "enqueued", "dequeued"), 0) | {"cpu": cpu, "online": 1}
    return base | counts


STATS = {"nr_cpus": 2, "queue_limit": 4096, "alloc_fail_nth": 0, "stall_ms": 0, "ctl_requests": 7, "ctl_errors": 1,
         "ctl_reply_fail": 0}
CPUS = [cbus(0, inserted=800, sent=300, drop_nolistener=500, enqueued=800, dequeued=800, hwm=21),
        cbus(1, inserted=800, sent=300, drop_nolistener=500, enqueued=800, dequeued=800, hwm=14)]


def total(cpus):
    keys = [k for k in kabi.CBUS_STATS.offsets if k not in ("cpu", "online", "batch_hist")]
    return {k: (max if k in ("hwm", "batch_max") else sum)(c.get(k, 0) for c in cpus) for k in keys} | {"online": 2}


class FakeModule:
    """The module's control callback on the far end of a socket pair: records requests, answers them."""

    def __init__(self, cpus=CPUS, gens=None, refuse=None):
        self.sockets = []
        self.requests = []
        self.cpus = cpus
        self.gens = gens or {}  # gen_id -> (state, cpus list)
        self.refuse = refuse or {}  # msg type -> -errno
        self.knobs = {kabi.CNLAB_FAULT_QLIMIT: 4096, kabi.CNLAB_FAULT_STALL_MS: 0, kabi.CNLAB_FAULT_ALLOC_NTH: 0}

    def client(self):
        """A client on a new socket pair (cnlabctl closes its client after each command)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sockets += [mine, theirs]
        threading.Thread(target=self._serve, args=(mine,), daemon=True).start()
        return kabi.CtlClient(theirs, timeout=2.0)

    def _serve(self, sock):
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            for msg in kabi.parse_datagram(data):
                hdr = kabi.HDR.unpack(msg.data)
                body = msg.data[kabi.HDR.size:]
                self.requests.append((hdr["type"], body))
                status, reply = self.answer(hdr["type"], body)
                head = kabi.HDR.pack(version=1, flags=kabi.CNLAB_F_REPLY, type=hdr["type"], status=status,
                                     len=len(reply), reserved=0)
                cn = kabi.frame_cn(kabi.CNLAB_CTL_IDX, kabi.CNLAB_CTL_VAL, head + reply, seq=msg.seq, ack=msg.ack + 1)
                sock.send(kabi.frame_nl(cn, seq=msg.seq))

    def answer(self, msg_type, body):
        if msg_type in self.refuse:
            return self.refuse[msg_type], b""
        if msg_type == kabi.CNLAB_MSG_ECHO:
            return 0, kabi.ECHO.pack(**(kabi.ECHO.unpack(body) | {"cpu": 1})) + body[kabi.ECHO.size:]
        if msg_type == kabi.CNLAB_MSG_STATS:
            rep = kabi.STATS_REP.pack(**(STATS | {"queue_limit": self.knobs[kabi.CNLAB_FAULT_QLIMIT],
                                                  "nr_cpus": len(self.cpus),
                                                  "total": total(self.cpus)}))
            return 0, rep + b"".join(kabi.CBUS_STATS.pack(**c) for c in self.cpus)
        if msg_type == kabi.CNLAB_MSG_GEN_START:
            cfg = kabi.GEN_START.unpack(body)
            return 0, kabi.GEN_START.pack(**(cfg | {"cpu_mask": cfg["cpu_mask"] & 3, "burst": cfg["burst"] or 64}))
        if msg_type == kabi.CNLAB_MSG_GEN_STOP:
            return 0, body
        if msg_type == kabi.CNLAB_MSG_GEN_STATS:
            gid = kabi.GEN_STATS_REQ.unpack(body)["gen_id"]
            state, cpus = self.gens.get(gid, (kabi.CNLAB_GEN_IDLE, []))
            cfg = {"gen_id": gid, "idx": 0x3E, "val": 1, "group": 2, "rate": 1000, "cpu_mask": 3, "path": 1}
            rep = kabi.GEN_STATS_REP.pack(gen_id=gid, state=state, nr_cpus=len(cpus), start_ns=1, end_ns=250_000_001,
                                          cfg=cfg)
            return 0, rep + b"".join(kabi.GEN_CPU_STATS.pack(**c) for c in cpus)
        if msg_type == kabi.CNLAB_MSG_SET_FAULT:
            f = kabi.FAULT.unpack(body)
            old = self.knobs.get(f["op"], 0)
            self.knobs[f["op"]] = f["value"]
            return 0, kabi.FAULT.pack(op=f["op"], value=old)
        return -errno.EINVAL, b""

    def close(self):
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def module(request):
    fake = FakeModule(**getattr(request, "param", {}))
    yield fake
    fake.close()


def run(module, *argv, module_dir="/nonexistent"):
    out = io.StringIO()
    status = cnlabctl.main(list(argv), out=out, client_factory=module.client if module else None,
                           module_dir=module_dir)
    return status, out.getvalue()


def test_stats_prints_the_knobs_a_table_and_the_ledgers_verdict(module):
    status, out = run(module, "stats", "--cpus")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "queue_limit 4096  alloc_nth 0  stall_ms 0  ctl_requests 7  ctl_errors 1  ctl_reply_fail 0"
    assert lines[1].split() == ["cpu", "online", "inserted", "sent", "full", "nomem", "nolisten", "overrun", "nlerr",
                                "rejected", "queued", "hwm", "enqueued", "dequeued"]
    assert lines[2].split() == ["0", "1", "800", "300", "0", "0", "500", "0", "0", "0", "0", "21", "800", "800"]
    assert lines[4].split()[:4] == ["total", "2", "1600", "600"] and lines[5] == "ledger ok"
    assert module.requests[-1] == (kabi.CNLAB_MSG_STATS, kabi.STATS_REQ.pack(flags=0))
    status, out = run(module, "stats")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["cpu", "total", "ledger"]


@pytest.mark.parametrize("module", [{"cpus": [cbus(0, inserted=10, enqueued=10, dequeued=9, sent=9)]}], indirect=True)
def test_stats_names_what_the_ledger_finds_unbalanced(module):
    _, out = run(module, "stats")
    assert out.splitlines()[-1] == ("ledger: enqueued 10 != dequeued 9 (still on the queue or lost) (in flight, "
                                    "or lost)")


def test_reset_hwm_sets_the_flag_and_json_is_the_whole_reply(module):
    status, out = run(module, "stats", "--reset-hwm", "--json")
    assert status == 0 and module.requests[-1][1] == kabi.STATS_REQ.pack(flags=kabi.CNLAB_STATS_F_RESET_HWM)
    body = json.loads(out)
    assert body["total"]["inserted"] == 1600 and [c["hwm"] for c in body["cpus"]] == [21, 14]


def test_start_encodes_every_option_and_picks_the_lowest_generator_not_running(module):
    module.gens = {0: (kabi.CNLAB_GEN_RUNNING, []), 1: (kabi.CNLAB_GEN_DONE, [])}
    status, out = run(module, "start", "--rate", "2000", "--count", "500", "--path", "direct", "--context", "softirq",
                      "--size", "64-128", "--cpus", "0,2-3", "--group", "5", "--idx", "0x42", "--burst", "8")
    assert status == 0
    assert out == "started generator 1: direct/softirq id 0x42:1 group 5 rate 2000/s cpus 0x1 burst 8\n"
    cfg = kabi.GEN_START.unpack(module.requests[-1][1])
    assert cfg == {"gen_id": 1, "idx": 0x42, "val": 1, "group": 5, "count": 500, "duration_ns": 0,
                   "cpu_mask": 0b1101, "rate": 2000, "size_min": 64, "size_max": 128,
                   "context": kabi.CNLAB_CTX_SOFTIRQ, "path": kabi.CNLAB_PATH_DIRECT, "flags": 0, "burst": 8}
    run(module, "start", "--id", "3", "--seconds", "1.5", "--bursts", "--bundle", "--burst", "4")
    cfg = kabi.GEN_START.unpack(module.requests[-1][1])
    assert (cfg["gen_id"], cfg["count"], cfg["duration_ns"], cfg["path"]) == (3, 0, 1_500_000_000, kabi.CNLAB_PATH_CBUS)
    assert cfg["flags"] == kabi.CNLAB_GEN_F_BUNDLE | kabi.CNLAB_GEN_F_BURSTS and cfg["cpu_mask"] == (1 << 64) - 1


def test_gen_and_stop_print_the_state_and_a_per_cpu_table(module):
    per_cpu = [{"cpu": c, "generated": 500, "ok": 490, "err_full": 10} for c in (0, 1)]
    module.gens = {2: (kabi.CNLAB_GEN_DONE, per_cpu)}
    status, out = run(module, "gen", "2")
    lines = out.splitlines()
    assert status == 0
    assert lines[0] == ("generator 2: done  cbus/kthread  id 0x3e:1 group 2  rate 1000/s  cpus 0x3  active 0  "
                        "ran 0.250 s")
    assert lines[1].split() == ["cpu", "generated", "ok", "nolisten", "overrun", "nomem", "full", "other"]
    assert lines[-1].split() == ["total", "1000", "980", "0", "0", "0", "20", "0"]
    status, out = run(module, "stop", "all")
    assert module.requests[-(1 + kabi.CNLAB_MAX_GENS)] == (kabi.CNLAB_MSG_GEN_STOP,
                                                           kabi.GEN_STOP.pack(gen_id=kabi.CNLAB_GEN_ALL))
    assert out.count("generator ") == 1 and "generator 2: done" in out  # idle generators are not listed


def test_fault_shows_sets_and_restores_the_knobs(module, tmp_path):
    (tmp_path / "parameters").mkdir()
    (tmp_path / "parameters" / "queue_limit").write_text("4096\n")
    assert run(module, "fault") == (0, "stall-ms 0  alloc-nth 0  queue-limit 4096\n")
    assert run(module, "fault", "queue-limit", "64") == (0, "queue-limit 64 (was 4096)\n")
    assert module.requests[-1] == (kabi.CNLAB_MSG_SET_FAULT, kabi.FAULT.pack(op=kabi.CNLAB_FAULT_QLIMIT, value=64))
    assert run(module, "fault", "queue-limit", "default", module_dir=str(tmp_path)) == \
        (0, "queue-limit 4096 (was 64)\n")
    assert run(module, "fault", "stall-ms", "default")[1] == "stall-ms 0 (was 0)\n"
    assert run(module, "fault", "warn") == (0, "warn: the module WARNed (see dmesg)\n")
    assert module.requests[-1][1] == kabi.FAULT.pack(op=kabi.CNLAB_FAULT_WARN, value=kabi.CNLAB_WARN_MAGIC)


@pytest.mark.parametrize("module", [{"refuse": {kabi.CNLAB_MSG_SET_FAULT: -errno.ENOTSUP,
                                                kabi.CNLAB_MSG_GEN_START: -errno.EBUSY}}], indirect=True)
def test_a_refused_request_is_one_line_and_exit_status_1(module, capsys):
    assert run(module, "fault", "warn")[0] == 1
    assert capsys.readouterr().err == ("cnlabctl: error: SET_FAULT warn refused: ENOTSUP (-95): write 1 to "
                                       "/nonexistent/parameters/debug_warn first\n")
    assert run(module, "start", "--id", "0")[0] == 1
    assert capsys.readouterr().err == "cnlabctl: error: GEN_START refused: EBUSY (-16)\n"


def test_echo_prints_the_bytes_back_and_the_cpu(module):
    status, out = run(module, "echo", "hello")
    assert status == 0 and out.startswith("echo: 5 bytes back from CPU 1 in ") and out.endswith(" us\n")
    assert module.requests[-1][1][kabi.ECHO.size:] == b"hello"


def test_no_module_no_answer(capsys, tmp_path):
    assert run(None, "stats", module_dir=str(tmp_path / "missing")) == (1, "")
    assert capsys.readouterr().err == f"cnlabctl: error: the cnlab module is not loaded ({tmp_path}/missing is " \
                                      "missing)\n"
    silent_a, silent_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    status = cnlabctl.main(["stats"], out=io.StringIO(), client_factory=lambda: kabi.CtlClient(silent_a, timeout=0.1))
    silent_b.close()
    silent_a.close()
    assert status == 1 and "no reply to STATS (is the cnlab module loaded?)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["stats", "--bogus"], "unrecognized arguments: --bogus"),
    (["start", "--group", "33"], "a connector group is 1..32, got '33'"),
    (["start", "--cpus", "3-1"], "CPU list like 0,2-3 or all"),
    (["start", "--size", "8"], "sizes must satisfy 32 <= MIN <= MAX <= 8192"),
    (["start", "--count", "5", "--seconds", "1"], "not allowed with argument"),
    (["stop", "16"], "a generator id is 0..15"),
    (["fault", "stall"], "invalid choice: 'stall'"),
    (["watch", "0"], "a connector group is 1..32"),
    (["watch", "--interval", "0"], "must be more than 0"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_input_is_one_line_and_exit_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cnlabctl.main(argv, client_factory=lambda: None)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count("error:") == 1


def test_every_subcommand_has_help(capsys):
    for command in ("echo", "stats", "start", "stop", "gen", "fault", "watch"):
        with pytest.raises(SystemExit) as info:
            cnlabctl.main([command, "--help"])
        assert info.value.code == 0 and f"usage: cnlabctl {command}" in capsys.readouterr().out


def _events(gen_id, cpu, seqs, other=False):
    msgs = b""
    for seq in seqs:
        data = kabi.EVENT.pack(gen_id=gen_id, cpu=cpu, seq=seq, ts_ns=1, len=32, flags=0)
        msgs += kabi.frame_nl(kabi.frame_cn(0x3E, 1, data, seq=seq))
    if other:
        msgs += kabi.frame_nl(kabi.frame_cn(0x1C, 1, b"x" * 8))
    return msgs


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_watch_prints_a_line_per_interval_and_a_total_with_gaps_and_enobufs(monkeypatch):
    feeder, listener = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    clock = FakeClock()
    batches = [_events(0, 0, range(0, 5)), _events(0, 0, [7, 8], other=True), OSError(errno.ENOBUFS, "full"),
               _events(1, 1, range(3))]
    joined = []

    class Sock:
        def fileno(self):
            return listener.fileno()

        def recv_into(self, buf):
            item = batches.pop(0)
            clock.now += 0.6
            if not batches:
                clock.now += 5.0
            if isinstance(item, OSError):
                listener.recv(100)
                raise item
            n = listener.recv_into(buf)
            return n

        def close(self):
            listener.close()

    def open_socket(groups, rcvbuf):
        joined.append((groups, rcvbuf))
        for b in batches:
            feeder.send(b"." if isinstance(b, OSError) else b)
        return Sock()

    out = io.StringIO()
    args = cnlabctl.build_parser().parse_args(["watch", "2", "5", "--interval", "1", "--seconds", "3"])
    assert cnlabctl.cmd_watch(args, out, open_socket=open_socket, clock=clock) == 0
    assert joined == [([2, 5], 1 << 21)]
    lines = out.getvalue().splitlines()
    assert lines[0] == "watching groups 2,5 (Ctrl-C to stop)"
    assert lines[1].split() == ["t_s", "received", "per_s", "gaps", "enobufs", "other"]
    assert lines[-1] == "total: 11 received in 7.4 s, 2 gaps, 1 enobufs, 1 other messages, 2 streams"
    assert lines[2].split() == ["1.2", "8", "8", "2", "0", "1"]
    feeder.close()


def test_watch_json_and_count(monkeypatch):
    feeder, listener = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    feeder.send(_events(4, 1, range(10)))
    feeder.send(_events(4, 1, range(10, 20)))
    out = io.StringIO()
    assert cnlabctl.main(["watch", "--count", "10", "--json"], out=out,
                         open_socket=lambda groups, rcvbuf: listener) == 0
    (summary,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert summary["total"] == 10 and summary["gaps"] == 0 and summary["streams"] == 1
    feeder.close()
