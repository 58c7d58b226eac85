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


def test_a_stopped_background_search_ends_at_its_next_checkpoint(monkeypatch):
    """Closing a session stops its filler in the middle of a point's search, not at the
    end of the search's budget (a closed session's planning took CPU from the next)."""
    import functools

    import lopinfer
    from lopinfer.runtime import policy
    from lopinfer.scheduler import adapt, search
    from lopinfer.scheduler.adapt import PlanBook
    from lopinfer.scheduler.builders import offload_plan
    from lopinfer.scheduler.cost import CostModel, Link, flop_costs
    from lopinfer.scheduler.energy import Objective
    from nets import REFERENCE_NETS

    # a search that would run on for minutes: a budget of 600 s, and a seed that never
    # ends by itself (the real one can finish within the second waited below on a
    # quick machine, and then the point is stored whole)
    monkeypatch.setattr(adapt, "Budget", functools.partial(search.Budget, seconds=600.0,
                                                           candidates=10**9))
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))

    def endless_seed(graph, pool, key, consider, lat, spent=lambda: False):
        while True:
            consider(offload_plan(graph, 2))

    monkeypatch.setattr(search, "grid", endless_seed)
    cost = CostModel(flop_costs(graph, 1e9), flop_costs(graph, 2e10), Link(2e6), Link(2e6))
    book = PlanBook(graph, cost, Objective(), ("local", "offload", "lopinfer"), grid=[2e6])
    stop = threading.Event()
    policy._start_filler(book, stop, False, {})
    thread = policy._FILLERS[-1][1]
    time.sleep(1.0)
    assert thread.is_alive()  # searching
    t0 = time.perf_counter()
    stop.set()
    thread.join(60)
    assert not thread.is_alive() and time.perf_counter() - t0 < 30
    assert not book.ready()  # the point was given up, not stored half-searched
