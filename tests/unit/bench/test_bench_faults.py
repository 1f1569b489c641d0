"""lab.bench.faults: the delay table from fault records (no guest), and the bench scenario reads and plans."""

from lab.bench.faults import BENCH_SCENARIO, delay_table
from lab.config import LabConfig
from lab.engine.plan import plan_scenario
from lab.engine.scenario import scenario_from_dict
from lab.plugin import get_plugin_manager


def test_delays_are_grouped_by_trigger_kind_against_the_goals():
    records = [{"trigger": "every 0.2 s", "delay_ms": d} for d in (2.0, 4.0, 150.0)]
    records += [{"trigger": "on received >= 5", "delay_ms": 1.0}, {"trigger": "at 1 s", "side": "host",
                                                                    "delay_ms": 30.0},
                {"trigger": "at 0 s", "before_load": True}]
    table = delay_table(records)
    assert table["at/every"] == {"n": 3, "median_ms": 4.0, "max_ms": 150.0, "goal_median": True, "goal_max": False}
    assert table["on event"]["n"] == 1 and table["host (qmp)"]["goal_median"] is False


def test_a_host_fault_delay_is_also_split_into_the_parts_measured_on_one_clock():
    records = [{"trigger": "every 1.5 s", "side": "host", "due": 1.5, "requested_at": 1.5012, "received": 1.53,
                "start": 1.5315, "delay_ms": 31.5}]
    table = delay_table(records)
    assert table["host: agent"]["median_ms"] == 1.2  # the guest's clock: due to request
    assert table["host: orch."]["median_ms"] == 1.5  # the host's clock: arrival to the QMP command
    assert table["host (qmp)"]["median_ms"] == 31.5


def test_the_bench_scenario_is_valid():
    registries = get_plugin_manager(LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"})).registries
    plan = plan_scenario(scenario_from_dict(BENCH_SCENARIO, "<bench>", registries), registries)
    assert {f["side"] for f in plan["faults"]} == {"guest", "host"}
    assert set(plan["events"]) == {"received", "queue_depth"}
