"""Client half of scripts/cross_version_check: reference nets offloaded and split, exact."""
import asyncio
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
import lopinfer
from helpers import assert_exact, reference
from lopinfer.scheduler import local_segments, offload_plan, split_plan
from nets import REFERENCE_NETS

url = sys.argv[1]
async def main():
    for name in ("vgg", "resnet", "unet"):
        model, x = REFERENCE_NETS[name]()
        ref = reference(model, x)
        async with lopinfer.connect(url, strict=True) as client:
            s = await client.deploy(model, (x,))
            g = s.graph
            seg = max(local_segments(g), key=lambda t: t[1] - t[0])
            for plan in (offload_plan(g, 3), split_plan(g, 0.5, seg[0], seg[1], 2, halo="send"), None):
                if plan is not None:
                    await s.use_plan(plan)
                out = await s.infer(x)
                assert_exact(out, ref)
                assert not s.last_report.fell_back
            print(name, "exact;", s.last_report)
asyncio.run(main())
print("client torch", torch.__version__)
