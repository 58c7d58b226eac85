"""``lopinfer probe`` against a real ``lopinfer serve`` child process."""

from __future__ import annotations

import json
import re

from lopinfer.cli import main


def test_probe_json_and_text(capsys, server_url):
    assert main(["probe", server_url, "--json", "--seconds", "0.5"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["url"] == server_url and doc["device"] == "cpu"
    assert doc["rtt_ms"] > 0 and doc["up_bytes_per_s"] > 0 and doc["down_bytes_per_s"] > 0
    assert doc["up_frame_us"] >= 0 and doc["up_samples"] > 0
    assert main(["probe", server_url, "--seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"server lopinfer (cpu) at {server_url}\n")
    assert re.search(r"rtt +[\d.]+ ms", out) and "MB/s" in out and "per frame" in out


def test_probe_refused_is_one_line(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["probe", f"tcp://127.0.0.1:{port}", "--timeout", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: connection refused by 127.0.0.1:{port}") and err.count("\n") == 1
