"""What an operator sees: the INFO log (text and JSON), the --http endpoint (/healthz,
/readyz, /metrics in the Prometheus format), client fallbacks reported to the server,
readable reports."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import subprocess
import sys

import pytest
import torch
from torch import nn

import lopinfer
from lopinfer.runtime import Server, connect
from lopinfer.runtime.http import HttpEndpoint, parse_hostport
from lopinfer.runtime.logs import JsonFormatter
from lopinfer.runtime.report import Report
from lopinfer.scheduler import offload_plan


def tiny() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    return model, torch.randn(1, 3, 16, 16)


async def http_get(url: str, path: str) -> tuple[int, str]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def test_log_lines_metrics_and_readiness(caplog):
    model, x = tiny()
    graph = lopinfer.capture(model, (x,))

    async def main():
        async with Server(token="t0ken") as server:
            (url,) = await server.start("tcp://127.0.0.1:0")
            endpoint = HttpEndpoint(server)
            http = await endpoint.start("127.0.0.1:0")
            try:
                assert (await http_get(http, "/readyz"))[0] == 200
                async with connect(url, token="wrong") as bad:
                    assert not bad.connected
                async with connect(url, token="t0ken", name="robot-7") as client:
                    session = await client.deploy(graph, None, plan=offload_plan(graph, 2))
                    await session.infer(x)
                    client.fallbacks.append((99, "no data from the server\nfor 30 s"))
                    await session.infer(x)  # tells the server first
                    status, text = await http_get(http, "/metrics")
                assert status == 200
                status, body = await http_get(http, "/healthz")
                assert status == 200 and json.loads(body)["status"] == "ok"
                assert (await http_get(http, "/nope"))[0] == 404
                server._closing = True  # what a drain does first
                assert (await http_get(http, "/readyz"))[0] == 503
                status, body = await http_get(http, "/healthz")  # alive while draining
                assert status == 200 and json.loads(body)["status"] == "draining"
                server._closing = False
            finally:
                await endpoint.aclose()
            return text

    with caplog.at_level(logging.INFO, logger="lopinfer.server"):
        text = asyncio.run(main())
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "lopinfer.server"]
    for e in ("connect", "rejected_token", "hello", "deploy", "plan", "client_fallback",
              "disconnect"):
        assert e in events, (e, events)
    msgs = "\n".join(r.getMessage() for r in caplog.records)
    assert "hello from client 'robot-7' at 127.0.0.1:" in msgs
    assert "rejected token from client 'lopinfer-client' at 127.0.0.1:" in msgs
    assert "uploaded)" in msgs and "plan 1 is offload/t2" in msgs
    assert "finished inference 99 locally: no data from the server for 30 s" in msgs
    assert "lopinfer_inferences_total 2.0" in text
    assert "lopinfer_ready 1.0" in text and 'lopinfer_info{version="' in text
    assert "lopinfer_rejected_tokens_total 1.0" in text
    assert "lopinfer_client_fallbacks_total 1.0" in text
    assert 'lopinfer_inference_seconds_bucket{le="+Inf"} 2.0' in text
    assert "lopinfer_worker_queue_wait_seconds_count" in text
    assert 'lopinfer_session_inferences_total{session="' in text and 'client="robot-7"} 2.0' in text
    assert 'lopinfer_deployment_inferences_total{model="Sequential",hash="' in text
    wire = [ln for ln in text.splitlines() if ln.startswith("lopinfer_wire_received_bytes_total")]
    assert float(wire[0].split()[1]) > 0
    if importlib.util.find_spec("prometheus_client"):  # the format is what Prometheus parses
        from prometheus_client.parser import text_string_to_metric_families

        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"lopinfer_inferences", "lopinfer_inference_seconds",
                "lopinfer_session_inferences"} <= names


def test_http_bad_requests_get_an_answer_not_a_hang():
    async def main():
        server = Server()
        endpoint = HttpEndpoint(server)
        url = await endpoint.start("127.0.0.1:0")
        host, port = url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"garbage\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 400")
        assert (await http_get(url, "/readyz"))[0] == 503  # not listening yet
        await endpoint.aclose()
        server.worker.close()

    asyncio.run(main())


@pytest.mark.parametrize(("text", "want"), [("0.0.0.0:9090", ("0.0.0.0", 9090)),
                                            (":9090", ("0.0.0.0", 9090)),
                                            ("[::1]:9090", ("::1", 9090))])
def test_parse_hostport(text, want):
    assert parse_hostport(text) == want


def test_parse_hostport_refuses():
    with pytest.raises(lopinfer.InputError, match="expected HOST:PORT"):
        parse_hostport("9090x")


def test_json_log_lines_carry_the_fields():
    rec = logging.LogRecord("lopinfer.server", logging.INFO, "f", 1, "session %x: hello", (255,),
                            None)
    rec.event, rec.client = "hello", "robot-7"
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["msg"] == "session ff: hello" and doc["level"] == "info"
    assert doc["event"] == "hello" and doc["client"] == "robot-7"


def test_serve_ws_without_aiohttp_names_the_extra(tmp_path):
    # a child interpreter where `import aiohttp` fails, as in a core-only install
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['aiohttp'] = None\n")
    env = {**__import__("os").environ}
    env["PYTHONPATH"] = f"{site}:{env.get('PYTHONPATH', '')}"
    proc = subprocess.run([sys.executable, "-m", "lopinfer.cli", "serve", "--listen",
                           "ws://127.0.0.1:0/lopinfer"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert err == ["error: the optional package 'aiohttp' is needed for ws:// listeners: "
                   "pip install 'lopinfer[ws]'"], proc.stderr
    assert "Traceback" not in proc.stderr


def test_report_reads_in_one_line_and_a_few():
    timeline = [{"peer": "client", "kind": "tile", "task": i, "start": i * 1e-4,
                 "end": i * 1e-4 + 5e-5} for i in range(5000)]
    r = Report(latency_s=0.0123, plan="split[0:29]@0.5/send/t4", bytes_up=2048,
               bytes_down=3 << 20, client_busy_s=0.008, server_busy_s=0.006,
               timeline=timeline, predicted_s=0.011, plan_bound_s=0.009, plan_reason="lopinfer plan",
               bandwidth_up=11e6, bandwidth_down=11e6)
    line = str(r)
    assert "\n" not in line
    assert line == (f"split[0:29]@0.5/send/t4: 12.3 ms, up 2.0 KiB, down 3.00 MiB, overlap "
                    f"{r.overlap:.0%}, fell_back=no")
    lines = r.summary().splitlines()
    assert lines[0] == line and 3 <= len(lines) <= 6
    assert "predicted 11.0 ms, plan bound 9.0 ms" in r.summary()
    assert "timeline" not in repr(r) and len(repr(r)) < 600
    assert len(r.format_timeline(limit=3).splitlines()) == 4  # 3 spans + "... more"
    fell = Report(latency_s=0.002, plan="local/t4", fell_back=True, reason="server unavailable")
    assert str(fell).endswith("fell_back=yes (server unavailable)")


def test_demo_table_has_a_legend_and_marks_the_fastest_exact_plan():
    from lopinfer.demo import format_table

    rows = [{"plan": "local", "kind": "local", "latency_ms": 5.0, "exact": True},
            {"plan": "cut@7/t4", "kind": "cut", "latency_ms": 3.0, "exact": True},
            {"plan": "offload", "kind": "offload", "latency_ms": 1.0, "exact": False}]
    for r in rows:
        r.update(bytes_up=0, bytes_down=0, overlap=0.0)
    text = format_table({"model": "m", "input": [1, 3, 8, 8], "transport": "tcp", "rows": rows})
    marked = [ln for ln in text.splitlines() if ln.startswith("* ")]
    assert marked[0].startswith("* cut@7/t4") and "fastest exact plan: cut@7/t4" in text
    assert "cut@k/tN: nodes [0, k) on the client" in text
    assert "offload/tN: every node on the server" in text
