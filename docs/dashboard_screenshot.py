"""Take the README's dashboard screenshot: the demo under LB, watched by a headless Chromium.

    python docs/dashboard_screenshot.py [OUT.png]

Runs `tidal demo --policies lb --dashboard 127.0.0.1:PORT` (about 25 s), waits until the LB
run has been going for SECONDS_IN, and saves the page (default docs/images/dashboard.png).
Needs the test extra (Playwright) and the distribution's Chromium, as the tests do.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from playwright.sync_api import sync_playwright

SECONDS_IN = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(out: str = "docs/images/dashboard.png") -> int:
    port = free_port()
    report = tempfile.mkdtemp(prefix="tidal-demo-")
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidal",
            "demo",
            "--policies",
            "lb",
            "--out",
            report,
            "--dashboard",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # the LB run announces its dashboard as it starts
            if "lb: the dashboard is at" in line:
                break
        else:
            raise SystemExit("the demo ended before its LB run started")
        started = time.monotonic()
        # Keep reading what it prints: a full pipe would stop it.
        threading.Thread(target=demo.stdout.read, daemon=True).start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium"), args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#executors tr[data-executor]")
            page.wait_for_timeout(max(0.0, SECONDS_IN - (time.monotonic() - started)) * 1000)
            page.screenshot(path=out, full_page=False)
            browser.close()
        print(f"wrote {out}")
    finally:
        demo.send_signal(signal.SIGINT)  # as Ctrl-C: it closes its clusters
        demo.wait(timeout=60)
        shutil.rmtree(report, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
