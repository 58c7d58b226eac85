"""The model store: a restarted server serves a stored deployment with no upload, exactly;
a stored file that no longer hashes to its name is deleted and uploaded again; the
folder stays within its bytes; a client's hash never names a file outside it."""

from __future__ import annotations

import asyncio

import pytest

import lopinfer
from helpers import assert_exact, reference
from lopinfer.graph.serialize import content_hash, graph_to_json
from lopinfer.runtime import Server, connect
from lopinfer.runtime.model_store import ModelStore
from nets import REFERENCE_NETS


async def _deploy_and_infer(store, model, x):
    """One fresh server over ``store``: deploy, infer (checked exact), close (which
    waits for the store's write). Returns the server's stats."""
    async with Server(store=store) as server:
        (url,) = await server.start("mem://store-test")
        async with connect(url, timeout=30) as client:
            session = await client.deploy(model, (x,))
            assert_exact(await session.infer(x), reference(model, x))
    return server.stats


def test_a_restarted_server_serves_the_stored_deployment(tmp_path):
    model, x = REFERENCE_NETS["resnet"]()
    store = ModelStore(tmp_path, 1 << 30)

    async def main():
        first = await _deploy_and_infer(store, model, x)
        assert first.deploys_cached == 0 and first.deploys_stored == 0  # uploaded
        digest = content_hash(lopinfer.capture(model, (x,)))
        assert digest in store
        second = await _deploy_and_infer(ModelStore(tmp_path, 1 << 30), model, x)
        assert second.deploys_cached == 1 and second.deploys_stored == 1  # nothing uploaded

    asyncio.run(main())


def test_a_stored_file_that_no_longer_matches_its_hash_is_uploaded_again(tmp_path):
    model, x = REFERENCE_NETS["resnet"]()
    store = ModelStore(tmp_path, 1 << 30)

    async def main():
        await _deploy_and_infer(store, model, x)
        (weights,) = tmp_path.glob("*.safetensors")
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0x40  # one weight changed on disk: every result would be wrong
        weights.write_bytes(bytes(data))
        again = await _deploy_and_infer(store, model, x)  # exact: asserted inside
        assert again.deploys_stored == 0 and again.deploys_cached == 0  # uploaded again
        assert store.load(weights.stem) is not None  # the upload was stored afresh

    asyncio.run(main())


def test_the_store_keeps_within_its_bytes_least_recently_used_out(tmp_path):
    graphs = []
    for name in ("resnet", "vgg", "unet"):
        model, x = REFERENCE_NETS[name]()
        g = lopinfer.capture(model, (x,))
        graphs.append((content_hash(g), g))
    sizes = [sum(t.numel() * t.element_size() for t in g.params.values()) + len(graph_to_json(g))
             for _, g in graphs]
    store = ModelStore(tmp_path, sizes[0] + sizes[1] + sizes[2] // 2 + max(sizes))
    for digest, g in graphs[:2]:
        assert store.save(digest, graph_to_json(g), g.params)
    assert store.load(graphs[0][0]) is not None  # used: now the most recent
    room = store.max_bytes
    store.max_bytes = sizes[0] + sizes[1] + sizes[2] - 1  # all three no longer fit
    assert store.save(graphs[2][0], graph_to_json(graphs[2][1]), graphs[2][1].params)
    kept = {d for _, _, d in store.entries()}
    assert kept == {graphs[0][0], graphs[2][0]}  # the least recently used one went
    assert sum(size for _, size, _ in store.entries()) <= store.max_bytes < room
    loaded = store.load(graphs[2][0])
    assert loaded is not None and content_hash(loaded) == graphs[2][0]


@pytest.mark.parametrize("claim", ["../" + "a" * 61, "A" * 64, "a" * 63, "", "a" * 64 + ".json"])
def test_a_clients_hash_never_names_a_file_outside_the_store(tmp_path, claim):
    store = ModelStore(tmp_path / "store", 1 << 20)
    (tmp_path / ("a" * 61 + ".json")).write_text("{}")
    assert claim not in store
    assert store.load(claim) is None


def test_a_store_too_small_for_a_model_keeps_nothing(tmp_path):
    model, x = REFERENCE_NETS["resnet"]()
    g = lopinfer.capture(model, (x,))
    store = ModelStore(tmp_path, 1024)
    assert not store.save(content_hash(g), graph_to_json(g), g.params)
    assert store.entries() == []


def test_the_stores_weights_file_is_safetensors_for_every_dtype(tmp_path):
    """Written from the tensors' own memory, read back by safetensors itself, bit for bit."""
    import torch
    from safetensors.torch import load_file

    from lopinfer.graph.format import DTYPES
    from lopinfer.runtime.model_store import write_safetensors

    params = {f"p_{name}": (torch.randn(3, 5) * 100).to(dtype)
              for name, dtype in DTYPES.items()}
    params["empty"] = torch.zeros(0, 4)
    params["strided"] = torch.randn(6, 4).t()  # not contiguous: written in logical order
    write_safetensors(tmp_path / "w.safetensors", params)
    back = load_file(str(tmp_path / "w.safetensors"))
    assert back.keys() == params.keys()
    for name, t in params.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert torch.equal(back[name], t), name


@pytest.mark.parametrize("damage", ["weights", "json"])
def test_an_unreadable_entry_is_deleted_and_the_model_uploaded(tmp_path, damage):
    model, x = REFERENCE_NETS["resnet"]()
    store = ModelStore(tmp_path, 1 << 30)

    async def main():
        await _deploy_and_infer(store, model, x)
        (js,) = tmp_path.glob("*.json")
        target = js if damage == "json" else js.with_suffix(".safetensors")
        target.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not it}" if damage == "weights"
                           else b'{"format": "something else"}')
        again = await _deploy_and_infer(store, model, x)  # exact: asserted inside
        assert again.deploys_stored == 0 and again.deploys_cached == 0
        assert js.stem in store  # uploaded again, and kept afresh

    asyncio.run(main())
