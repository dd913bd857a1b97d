"""A screenshot of `swe-aem view`'s page (for docs): headless chromium through Playwright.

    python scripts/screenshot_view.py RUN/view/index.html OUT.png [--route '#/0/set/s000000'] [--episode]

--episode opens the first resolved episode of the route's table (else the first one)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("index", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--route", default="#/0/run")
    p.add_argument("--episode", action="store_true")
    p.add_argument("--height", type=int, default=1100)
    args = p.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": args.height})
        page.goto(args.index.resolve().as_uri() + args.route)
        page.wait_for_selector("#main > *")
        if args.episode:
            rows = page.query_selector_all("#episodes tr.ep")
            good = [r for r in rows if (r.query_selector("td[data-col='reward']").inner_text() == "1")]
            (good or rows)[0].query_selector("td[data-col='reward']").click()
            page.wait_for_selector(".card.turn")
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
