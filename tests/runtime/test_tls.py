"""TLS for real networks: ``tls://`` (TCP inside TLS) with a certificate made here by
``trustme`` (a throwaway CA), exact results through it, clear one-line errors when one
side speaks TLS and the other does not, and ``lopinfer serve --cert/--key``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings

import pytest
import torch

import lopinfer
from helpers import assert_exact, reference
from lopinfer.errors import ConnectError, LopInferError
from lopinfer.runtime import LOPInfer, Server, connect
from lopinfer.scheduler import offload_plan
from lopinfer.transports import server_ssl_context
from nets import REFERENCE_NETS

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    ca_file, chain, key = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_pem.write_to_path(str(key))
    with open(chain, "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    return str(ca_file), str(chain), str(key)


def _run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, 120)

    return asyncio.run(bounded())


def test_a_tls_server_is_exact_and_plain_peers_get_one_line_errors(certs):
    ca, chain, key = certs
    model, x = REFERENCE_NETS["vgg"]()
    graph = lopinfer.capture(model, (x,))

    async def main():
        async with Server() as server:
            (tls_url,) = await server.start("tls://127.0.0.1:0", ssl=server_ssl_context(chain, key))
            tcp_url = (await server.start("tcp://127.0.0.1:0"))[-1]
            assert tls_url.startswith("tls://")
            async with connect(tls_url, ca=ca) as client:
                session = await client.deploy(graph, None, plan=offload_plan(graph, 3))
                assert_exact(await session.infer(x), reference(model, x))
                assert not session.last_report.fell_back
                assert client.conn.scheme == "tls"
            # a client that does not trust the certificate
            with pytest.raises(ConnectError, match="TLS handshake") as info:
                async with connect(tls_url, strict=True, timeout=5):
                    pass
            assert "\n" not in str(info.value)
            # a plain client against the TLS port
            with pytest.raises(ConnectError) as info:
                async with connect("tcp://" + tls_url.removeprefix("tls://"), strict=True,
                                   timeout=2):
                    pass
            assert "\n" not in str(info.value)
            # a TLS client against a plain port
            with pytest.raises(ConnectError, match="TLS handshake"):
                async with connect("tls://" + tcp_url.removeprefix("tcp://"), ca=ca, strict=True,
                                   timeout=5):
                    pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        _run(main())


def test_serve_takes_a_certificate_and_refuses_tls_without_one(certs):
    ca, chain, key = certs
    from lopinfer.runtime.serve import main

    assert main(["--listen", "tls://127.0.0.1:0"]) == 2  # no --cert: refused at once
    model, x = REFERENCE_NETS["vgg"]()
    proc = subprocess.Popen([sys.executable, "-m", "lopinfer.runtime.serve", "--listen",
                             "tls://127.0.0.1:0", "--cert", chain, "--key", key],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("LOPINFER_LISTENING tls://"), line
        host_port = line.split("tls://", 1)[1]
        ip, port = host_port.rsplit(":", 1)
        lop = LOPInfer(ip=ip, port=int(port), tls=True, ca=ca, strict=True)
        lop.start_client(model=model, example=x, plan=lambda g: offload_plan(g, 2))
        with torch.no_grad():
            assert_exact(model(x), reference(model, x))
        assert not lop.last_report.fell_back
        lop.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        proc.stdout.close()


def test_a_bad_ca_file_is_an_error_at_once(tmp_path):
    with pytest.raises(LopInferError, match="CA file"):
        connect("tls://127.0.0.1:1", ca=str(tmp_path / "missing.pem"))
