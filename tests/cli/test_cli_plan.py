"""``lopinfer plan``: every planner at a bandwidth, or for a measured server."""

from __future__ import annotations

import json

from cli_helpers import CNN, run_json

from lopinfer.cli import main


def test_plan_command_lists_every_planner(capsys):
    code, doc = run_json(capsys, "plan", CNN, "--bandwidth", "20MB/s", "--input-shape", "1,3,32,32")
    assert code == 0
    names = [p["planner"] for p in doc["plans"]]
    assert names[-1] == "lopinfer" and {"local", "offload", "neurosurgeon"} <= set(names)
    best = min(p["latency_ms"] for p in doc["plans"] if p["planner"] != "lopinfer")
    assert doc["plans"][-1]["latency_ms"] <= best + 1e-9
    assert all(p["bound_ms"] <= p["latency_ms"] + 1e-9 for p in doc["plans"])
    # the physical limit: no planner's own bound is below it, each latency a multiple of it
    assert 0 < doc["limit_ms"] <= min(p["bound_ms"] for p in doc["plans"]) * (1 + 1e-6)
    assert all(p["x_limit"] >= 1 - 1e-6 for p in doc["plans"])


def test_parse_rate():
    from lopinfer.cli import parse_rate

    assert parse_rate("10MB/s") == 10e6
    assert parse_rate("80Mbit/s") == 10e6
    assert parse_rate("1KiB/s") == 1024
    assert parse_rate("2e6") == 2e6


def test_plan_with_a_measured_server(capsys, server_url):
    assert main(["plan", CNN, "--server", server_url, "--input-shape", "1,3,32,32",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["server"] == server_url and doc["bandwidth"] > 0 and doc["client_speed"] == 1
    assert [p["planner"] for p in doc["plans"]][-1] == "lopinfer"


def test_plan_needs_a_bandwidth_or_a_server(capsys):
    assert main(["plan", CNN]) == 2
    assert "give --bandwidth RATE, or --server URL" in capsys.readouterr().err
