"""Benchmark: latency of the prompting page per new image and per click, PyTorch vs onnxruntime.

The bundled ``sam-mini-med`` foundation at 256 px (latency does not depend on the weights), exported
with ``medpeft.deploy.onnx.export_graphs``. Per new image: the image encoder. Per click: the prompt
decoder on the cached embedding (one label, two points and the previous mask). "Page" rows time the
server's whole request (prompts, decoder, resize back, overlay PNG), as the page sees it minus the
network. Medians over ``--repeats``.

    python benchmarks/deploy_latency.py --out docs/deploy_latency.json
    python benchmarks/deploy_latency.py --base facebook/sam-vit-base --image-size 1024 --device cuda  # GPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from machine import report


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import numpy as np
    import torch

    from medpeft.config import parse_config
    from medpeft.deploy.onnx import MANIFEST, OnnxSegmenter, export_graphs
    from medpeft.deploy.serve import Server
    from medpeft.engine.build import build_model
    from medpeft.models.prompts import Prompts

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="sam-mini-med")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    labels = ["liver", "kidney", "spleen"]
    cfg = parse_config(
        {
            "model": {"base": args.base, "image_size": args.image_size, "class_prompt": "learned"},
            "adapters": [],
        }
    )
    model, _ = build_model(cfg, labels)
    model.eval()
    folder = Path(tempfile.mkdtemp(prefix="medpeft-latency-"))
    t0 = time.perf_counter()
    import json

    (folder / MANIFEST).write_text(json.dumps({"format": "medpeft-onnx", **export_graphs(model, folder)}))
    export_s = time.perf_counter() - t0
    exported = OnnxSegmenter(folder)
    model.to(args.device)
    s = args.image_size
    images = torch.randn(1, 3, s, s)
    prompts = Prompts(
        points=torch.tensor([[[[s * 0.4, s * 0.5], [s * 0.7, s * 0.2]]]]),
        point_labels=torch.tensor([[[1, 0]]]),
        class_ids=torch.tensor([[0]]),
        masks=torch.randn(1, 1, s // 4, s // 4),
    )
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (s, s, 3), dtype=np.uint8)
    rows = []
    for engine, segmenter in (("torch", model), ("onnxruntime", exported)):
        x = images.to(segmenter.device)
        p_ = prompts.to(segmenter.device)
        with torch.no_grad():
            embeddings = segmenter.image_embeddings(x)
            image_ms = median_ms(lambda seg=segmenter, x=x: seg.image_embeddings(x), args.repeats)
            click_ms = median_ms(
                lambda seg=segmenter, e=embeddings, p=p_: seg.segment(e, p, (s, s)), args.repeats
            )
        server = Server(segmenter, cfg, engine)
        opened = server.open("frame.png", _png(picture))
        request = {"id": opened["id"], "label": "liver", "points": [[100, 120, 1]]}

        def new_image(server=server, request=request) -> None:
            server.embeddings.clear()
            server.segment(request)

        first_ms = median_ms(new_image, max(3, args.repeats // 4))
        server.segment(request)
        page_click_ms = median_ms(
            lambda server=server, request=request: server.segment(
                {**request, "points": [[100, 120, 1], [30, 40, 0]], "refine": True}
            ),
            args.repeats,
        )
        rows.append(
            {
                "engine": engine,
                "device": args.device if engine == "torch" else ",".join(exported.encoder.get_providers()),
                "image_encoder_ms": image_ms,
                "decoder_click_ms": click_ms,
                "page_new_image_ms": first_ms,
                "page_click_ms": page_click_ms,
            }
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| engine | device | image encoder ms | decoder per click ms | page: new image ms | page: click ms |",
            "|---|---|---|---|---|---|",
            *(
                f"| {r['engine']} | {r['device']} | {r['image_encoder_ms']:.1f} | {r['decoder_click_ms']:.2f} | "
                f"{r['page_new_image_ms']:.1f} | {r['page_click_ms']:.1f} |"
                for r in rows
            ),
        ]
    )
    settings = {k: str(v) for k, v in vars(args).items()}
    return report(rows, table, args.out, settings=settings, export_seconds=export_s)


def _png(array) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    main()
