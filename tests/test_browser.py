"""One end-to-end run in a real Chromium: two MoE models stream side by side, then the Routing heatmap."""

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, server: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("streamlit did not become healthy")


@contextlib.contextmanager
def served(env: dict | None = None):
    """A fresh ``streamlit run app.py`` on a free port (as the README starts it), healthy; yields the port."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.fileWatcherType",
            "none",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_healthy(port, server)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


@contextlib.contextmanager
def opened(chromium: str, port: int, path: str, timeout_ms: int = 60_000):
    """A Chromium page at ``path`` of the app served on ``port`` (1400 × 1100); yields the page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(timeout_ms)
            page.goto(f"http://127.0.0.1:{port}{path}")
            yield page
        finally:
            browser.close()


def _texts(page) -> list[str]:
    return page.locator("[data-testid='stCode'] code").all_inner_texts()


@pytest.mark.browser
def test_two_moe_models_stream_and_routing_renders(chromium):
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with served() as port:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.set_default_timeout(30_000)
                page.goto(f"http://127.0.0.1:{port}/?models=deepseek-v3,qwen3-30b-a3b")
                page.get_by_role("link", name="Playground").first.click()
                generate = page.get_by_role("button", name="Generate")
                generate.wait_for()
                page.wait_for_timeout(1000)  # let the first render settle (stale twins of widgets vanish)
                prompt = page.get_by_role("textbox", name="Prompt").first
                prompt.fill("Experts in a mixture of experts layer")
                prompt.press("Tab")
                tokens = page.get_by_role("spinbutton", name="Max new tokens").first
                tokens.fill("300")
                tokens.press("Tab")
                page.wait_for_timeout(500)
                generate.click()
                # both columns stream: text appears in each and keeps growing while the run goes on
                page.wait_for_function(
                    "document.querySelectorAll(\"[data-testid='stCode'] code\").length == 2 && "
                    "[...document.querySelectorAll(\"[data-testid='stCode'] code\")]"
                    ".every(c => c.innerText.trim().length > 0)",
                    timeout=45_000,
                )
                first = [len(t) for t in _texts(page)]
                page.screenshot(path=str(ARTIFACTS / "playground-streaming.png"))
                page.get_by_text("Timings").wait_for(timeout=60_000)
                final = [len(t) for t in _texts(page)]
                assert len(final) == 2 and all(f > 0 for f in final)
                assert any(f > s for f, s in zip(final, first)), (first, final)
                page.screenshot(path=str(ARTIFACTS / "playground-done.png"))
                page.get_by_role("link", name="Routing").first.click()
                page.locator("g.hm, .heatmaplayer image, .heatmaplayer").first.wait_for()
                heading = page.get_by_text("top-1 expert of each token in each MoE layer").first
                heading.wait_for()
                assert page.locator(".main-svg").count() >= 5
                page.get_by_role("button", name="PNG").first.wait_for()
                page.screenshot(path=str(ARTIFACTS / "routing.png"), full_page=True)
            finally:
                browser.close()
