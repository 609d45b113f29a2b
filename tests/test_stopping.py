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
