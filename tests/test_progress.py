"""Long steps say what they do: a bar on a terminal, log records otherwise; never print."""

from __future__ import annotations

import logging

from lopinfer.progress import Steps, announce, progress


def test_steps_log_each_step_when_not_on_a_terminal(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="lopinfer.progress"):
        with Steps("deploying m", 2, enabled=False) as steps:
            steps.step("uploading")
            steps.step("planning")
        announce("first call of M: capturing it")
        tick = progress(True, 2, "profiling")
        tick()
    text = [r.getMessage() for r in caplog.records if r.name == "lopinfer.progress"]
    assert text[:3] == ["deploying m: uploading", "deploying m: planning",
                        "first call of M: capturing it"]
    out = capsys.readouterr()
    assert out.out == ""  # the library never writes to stdout
