"""Ctrl-C and kill: heard at once outside a slide, at the next safe point inside one (a signal
raised inside a C library's callback into Python would be printed and lost)."""

import os
import signal

import pytest

from dn_cli.stopping import Stop, stopped_by_signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_outside_a_slide_stops_at_once(signum):
    with stopped_by_signals(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signum)
        for _ in range(10**6):  # the handler runs between two bytecodes of this loop
            pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_slide_waits_for_a_safe_point(signum):
    reached = []
    with stopped_by_signals(), pytest.raises(KeyboardInterrupt):
        with Stop.making_a_slide():
            os.kill(os.getpid(), signum)
            for _ in range(10**6):
                pass
            reached.append("after the signal")  # not raised in the middle of the slide's work
            Stop.check()  # a safe point: the next batch's progress
            reached.append("past the safe point")
    assert reached == ["after the signal"]


def test_a_signal_at_the_end_of_a_slide_stops_before_the_next():
    with stopped_by_signals(), pytest.raises(KeyboardInterrupt):
        with Stop.making_a_slide():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):
                pass
    assert signal.getsignal(signal.SIGTERM) is not Stop.handle  # the handlers are restored


def test_only_the_first_signal_raises():
    """A second signal (the parent's SIGTERM after a terminal's Ctrl-C) must not break into the
    unwinding the first started."""
    unwound = []
    with stopped_by_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10**6):
                pass
        except KeyboardInterrupt:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):
                pass
            unwound.append("cleaned up")
    assert unwound == ["cleaned up"]


def test_each_run_starts_without_the_last_ones_stop():
    """Runs in one process (the Python API, a notebook, the tests): a stop heard in one is not the next one's."""
    with stopped_by_signals(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**6):
            pass
    assert not Stop.asked  # work after the run, outside any run, goes on
    Stop.asked = True  # heard while no run listened
    with stopped_by_signals(), Stop.making_a_slide():
        Stop.check()
    Stop.asked = False


def test_inside_the_models_forward_a_signal_raises_at_once():
    reached = []
    with stopped_by_signals(), pytest.raises(KeyboardInterrupt), Stop.making_a_slide():
        with Stop.interruptible():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):
                pass
            reached.append("after the signal")
    assert reached == []
