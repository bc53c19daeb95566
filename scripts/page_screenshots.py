"""Pictures of the prompting page for the README: ``medpeft serve`` on a run, driven in headless Chromium.

python scripts/page_screenshots.py runs/demo demo_data/totalseg_ct --label liver --out docs
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from medpeft.deploy.serve import load_server, make_app

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("data", type=Path, help="folder with images/ and masks/ (labels.json)")
    p.add_argument("--label", default="liver")
    p.add_argument("--image", default=None, help="image file name (default: the one with most of --label)")
    p.add_argument("--out", type=Path, default=Path("docs"))
    args = p.parse_args()
    import json

    table = {v: int(k) for k, v in json.loads((args.data / "labels.json").read_text()).items()}
    masks = sorted((args.data / "masks").iterdir())
    if args.image is None:
        best = max(masks, key=lambda m: int((np.asarray(Image.open(m)) == table[args.label]).sum()))
        args.image = best.name
    truth = np.asarray(Image.open(args.data / "masks" / args.image)) == table[args.label]
    ys, xs = np.nonzero(truth)
    server = load_server(args.run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = uvicorn.Server(uvicorn.Config(make_app(server), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=web.run, daemon=True).start()
    while not web.started:
        time.sleep(0.05)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium"), headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.getElementById('label').options.length > 0")
        page.select_option("#label", args.label)
        page.set_input_files("#file", str(args.data / "images" / args.image))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('opened')")
        box = page.locator("#canvas").bounding_box()
        h, w = truth.shape
        for k in (len(xs) // 2, len(xs) // 5):  # two clicks inside the structure
            x, y = xs[k], ys[k]
            page.mouse.click(
                box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (y + 0.5) * box["height"] / h
            )
            page.wait_for_function("document.getElementById('status').textContent.startsWith('segmented')")
        args.out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out / "serve_clicks.png"))
        page.click("#auto")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('segmented all')")
        page.screenshot(path=str(args.out / "serve_auto.png"))
        browser.close()
    web.should_exit = True
    print(f"wrote {args.out}/serve_clicks.png and {args.out}/serve_auto.png ({args.image})")


if __name__ == "__main__":
    main()
