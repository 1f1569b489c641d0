"""The ABI fuzzer's generation and model, without a guest (the guest run is in tests/integration/kmod)."""

from __future__ import annotations

import errno

from .guest_modules import load_guest_module

fz = load_guest_module("abi_fuzz")
kabi = fz.kabi


def model() -> object:
    return fz.Model(online=[0, 1], nr_cpu_ids=2, nr_stats=2)


def test_field_values_are_the_boundaries():
    assert fz.field_values("cnlab_gen_stop", "gen_id", "I", {}) == [0, 1, kabi.CNLAB_MAX_GENS - 1,
                                                                   kabi.CNLAB_MAX_GENS, 0xFFFFFFFF]
    assert fz.field_values("cnlab_fault", "reserved", "I", {}) == [0, 1, 0xFFFFFFFF]
    assert fz.field_values("cnlab_bench", "chunk", "I", {})[2:4] == [kabi.CNLAB_BENCH_CHUNK_MAX,
                                                                     kabi.CNLAB_BENCH_CHUNK_MAX + 1]


def test_every_body_field_of_every_type_is_mutated():
    for mtype, bases in fz.BASES.items():
        labels = [label for label, _ in fz.structural_mutations(mtype, bases[0], 2)]
        layout = fz.BODY[mtype]
        for field, _ in ([] if layout is None else layout.fields):
            assert any(f".{field}=" in label for label in labels), (kabi.MSG_NAMES[mtype], field)
        assert {"body+1", "two nlmsgs"} <= set(labels)


def test_model_privilege_rules():
    m = model()
    for mtype in fz.PRIVILEGED:
        dg = fz.Case(mtype, fz.BASES[mtype][0], "x").encode(1)
        assert m.predict(dg, privileged=False).status == -errno.EPERM, kabi.MSG_NAMES[mtype]
    for mtype in (kabi.CNLAB_MSG_ECHO, kabi.CNLAB_MSG_STATS, kabi.CNLAB_MSG_GEN_STATS):
        dg = fz.Case(mtype, fz.BASES[mtype][0], "x").encode(1)
        assert m.predict(dg, privileged=False).status == 0, kabi.MSG_NAMES[mtype]
    reset = fz.Case(kabi.CNLAB_MSG_STATS, {"flags": kabi.CNLAB_STATS_F_RESET_HWM}, "x").encode(1)
    assert m.predict(reset, privileged=False).status == -errno.EPERM


def test_model_lengths_and_framing():
    m = model()
    base = fz.BASES[kabi.CNLAB_MSG_GEN_STOP][0]
    assert m.predict(fz.Case(kabi.CNLAB_MSG_GEN_STOP, base, "x", tail=b"\0").encode(1), True).status \
        == -errno.EBADMSG
    assert m.predict(fz.Case(kabi.CNLAB_MSG_GEN_STOP, base, "x", cut=1).encode(1), True).status == -errno.EBADMSG
    # the connector drops these before the module: no reply at all
    assert not m.predict(fz.Case(kabi.CNLAB_MSG_ECHO, {}, "x", nl={"len": 1}).encode(1), True).reply
    assert not m.predict(fz.Case(kabi.CNLAB_MSG_ECHO, {}, "x", cn={"idx": 0xFFFFFFFF}).encode(1), True).reply


def test_model_bounds_and_state():
    m = model()
    bench = dict(fz.BASES[kabi.CNLAB_MSG_BENCH][0], chunk=kabi.CNLAB_BENCH_CHUNK_MAX + 1)
    m.qlimit = kabi.CNLAB_QLIMIT_MAX
    assert m.predict(fz.Case(kabi.CNLAB_MSG_BENCH, bench, "x").encode(1), True).status == -errno.ERANGE
    start = fz.Case(kabi.CNLAB_MSG_GEN_START, fz.BASES[kabi.CNLAB_MSG_GEN_START][0], "x").encode(1)
    p = m.predict(start, True)
    assert p.status == 0 and p.effect[1]["burst"] == 64
    m.apply(p.effect)
    assert m.predict(start, True).status == -errno.EBUSY
    big = dict(fz.BASES[kabi.CNLAB_MSG_GEN_START][3], burst=0, size_max=8192)  # hard IRQ, default burst
    assert m.predict(fz.Case(kabi.CNLAB_MSG_GEN_START, big, "x").encode(1), True).effect[1]["burst"] == 64
    assert m.predict(fz.Case(kabi.CNLAB_MSG_GEN_START, dict(big, burst=129), "x").encode(1), True).status \
        == -errno.EINVAL
