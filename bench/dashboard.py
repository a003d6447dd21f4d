"""Dashboard performance in a real browser: first load, a flood of streamed chunks, bundle size.

Starts ``foundry serve`` in mock mode (in-process runtime, demo agent) on a free port, drives
Debian's Chromium through Playwright, and prints one JSON object:

- ``first_load_ms``: median over ``--loads`` reloads of the workspace, from navigation start until
  the task sidebar is drawn (the app's ``foundry:workspace-ready`` performance mark);
- ``flood_chunks``: message chunks the demo agent streamed in one reply (``flood <N>``);
- ``flood_rendered``: how many of them the page shows, each once and in order;
- ``longest_task_ms``: the longest main-thread task while the reply streamed, from its first chunk
  on screen to its last (Long Tasks API; 0 when none reached the API's 50 ms floor);
- ``stream_s``: seconds from opening the task to the last chunk on screen;
- ``js_gzip_kb``: all JavaScript of the dashboard, gzipped.

    .venv/bin/python bench/dashboard.py [--chunks 2000] [--loads 5]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser.conftest import LONG_TASKS_SCRIPT, long_tasks_between, text_shown_at  # noqa: E402
from tests.browser.support import CHROMIUM, DIST, Server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--delay", default="0.002", help="seconds between the demo agent's chunks")
    args = parser.parse_args()
    if not (DIST / "index.html").is_file():
        sys.exit("the dashboard is not built: run scripts/bootstrap.sh")

    js_gzip = sum(p.stat().st_size for p in (DIST / "assets").glob("*.js.gz"))
    with tempfile.TemporaryDirectory(prefix="foundry-bench-dashboard-") as tmp:
        server = Server(Path(tmp) / "data", agent_delay=args.delay)
        try:
            server.wait_ready()
            result = run(server.url, args.chunks, args.loads)
        finally:
            server.stop()
    result["js_gzip_kb"] = round(js_gzip / 1024, 1)
    print(json.dumps(result))


def run(url: str, chunks: int, loads: int) -> dict[str, float | int]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        ctx = browser.new_context(base_url=url, viewport={"width": 1280, "height": 800})
        ctx.add_init_script(LONG_TASKS_SCRIPT)
        page = ctx.new_page()
        page.goto("/")
        page.get_by_role("button", name=re.compile("Continue as alice")).click()
        page.wait_for_url(re.compile(r"/o/acme$"), timeout=60_000)
        page.locator("a[data-task-id]").first.wait_for()

        samples = []
        for _ in range(loads):
            page.reload()
            page.locator("a[data-task-id]").first.wait_for()
            samples.append(
                page.evaluate("() => performance.getEntriesByName('foundry:workspace-ready')[0].startTime")
            )

        created = page.request.post(
            "/v1/organizations/acme/tasks", data={"repoId": "910001", "prompt": f"flood {chunks}"}
        )
        task_id = created.json()["taskId"]
        start = time.monotonic()
        page.goto(f"/o/acme/t/{task_id}")
        # Long tasks while the reply streams: from its first chunk on screen to its last (the page
        # load and the opening of the task are not part of it).
        first = text_shown_at(page, " w1", timeout=120_000)
        last = text_shown_at(page, f" w{chunks}", timeout=600_000)
        stream_s = time.monotonic() - start
        long_tasks = long_tasks_between(page, first, last)
        text = page.get_by_test_id("agent-text").first.text_content() or ""
        browser.close()

    shown = [int(n) for n in re.findall(r" w(\d+)", text)]
    in_order = 0
    for expected, got in enumerate(shown, start=1):
        if got != expected:
            break
        in_order = expected
    return {
        "first_load_ms": round(statistics.median(samples), 1),
        "flood_chunks": chunks,
        "flood_rendered": in_order if len(shown) == in_order else -len(shown),
        "longest_task_ms": round(max(long_tasks, default=0), 1),
        "stream_s": round(stream_s, 1),
    }


if __name__ == "__main__":
    main()
