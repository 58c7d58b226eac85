import os
import signal
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    """A real ``lopinfer serve`` child process on 127.0.0.1 (stopped with SIGTERM), its
    model store in a folder of its own."""
    store = tmp_path_factory.mktemp("store")
    proc = subprocess.Popen([sys.executable, "-m", "lopinfer.cli", "serve", "--listen",
                             "tcp://127.0.0.1:0", "--store", str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = proc.stdout.readline().strip()
    assert line.startswith("LOPINFER_LISTENING "), line
    yield line.split(" ", 1)[1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    proc.stdout.close()
