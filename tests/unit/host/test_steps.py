"""Long steps report a start and a duration, a cached result or a failure, through logging."""

import logging

import pytest

from lab.host.steps import STEP_LOGGER, StepEvent, cached, step


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.events = []

    def emit(self, record):
        self.events.append(record.step_event)


@pytest.fixture()
def events():
    handler = _Collect()
    logger = logging.getLogger(STEP_LOGGER)
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.events
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_a_step_names_itself_then_its_duration(events):
    with step("root disk", "mmdebstrap bookworm"):
        pass
    assert [e.state for e in events] == ["start", "done"]
    assert events[0].text() == "root disk (mmdebstrap bookworm) ..."
    assert events[1].seconds is not None and events[1].text().startswith("root disk: done in ")


def test_a_failing_step_says_so_and_the_error_goes_on(events):
    with pytest.raises(RuntimeError):
        with step("module build"):
            raise RuntimeError("cbus.c:12: error: expected ';'\nmore")
    assert events[-1].state == "failed" and events[-1].detail == "cbus.c:12: error: expected ';'"


def test_a_cached_step_is_one_event(events):
    cached("kernel", "linux-image-6.1.0-57-cloud-amd64 6.1.192-3")
    assert len(events) == 1 and events[0].text() == "kernel: cached (linux-image-6.1.0-57-cloud-amd64 6.1.192-3)"


def test_steps_are_silent_without_a_renderer(capsys):
    with step("quiet"):
        cached("also quiet")
    assert capsys.readouterr() == ("", "")


def test_an_unknown_state_is_refused():
    with pytest.raises(ValueError):
        StepEvent("x", "finished")
