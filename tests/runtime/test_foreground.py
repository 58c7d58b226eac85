"""Background planning yields to the process's inferences (runtime.policy.Foreground)."""

from __future__ import annotations

import threading
import time

from lopinfer.runtime.policy import Foreground


def test_idle_costs_nothing_and_busy_holds_the_planner_back():
    fg = Foreground()
    assert fg.wait_idle() == 0.0
    release = threading.Event()
    entered = threading.Event()

    def inference() -> None:
        with fg.busy():
            entered.set()
            release.wait(5)

    t = threading.Thread(target=inference)
    t.start()
    entered.wait(5)
    threading.Timer(0.1, release.set).start()
    waited = fg.wait_idle()
    t.join()
    assert 0.05 <= waited < fg.MAX_PAUSE_S + 0.5
    assert fg.wait_idle() == 0.0


def test_a_pause_is_bounded_when_inferences_never_stop():
    fg = Foreground()
    fg.MAX_PAUSE_S = 0.05
    with fg.busy():
        t0 = time.perf_counter()
        waited = fg.wait_idle()
        assert waited >= 0.04 and time.perf_counter() - t0 < 1.0


def test_nested_inferences_keep_it_busy_until_the_last_ends():
    fg = Foreground()
    fg.MAX_PAUSE_S = 0.02
    with fg.busy():
        with fg.busy():
            pass
        assert fg.wait_idle() > 0.0  # one still runs
    assert fg.wait_idle() == 0.0
