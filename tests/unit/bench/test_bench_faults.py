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


def test_the_bench_scenario_is_valid():
    registries = get_plugin_manager(LabConfig(env={"LAB_DISABLE_PLUGIN_AUTOLOAD": "1"})).registries
    plan = plan_scenario(scenario_from_dict(BENCH_SCENARIO, "<bench>", registries), registries)
    assert {f["side"] for f in plan["faults"]} == {"guest", "host"}
    assert set(plan["events"]) == {"received", "queue_depth"}
