"""Screenshots of the dashboard's pages for the README, re-made with one command.

Starts ``streamlit run app.py`` from this checkout on a free port (``bench/ui.py``'s server), opens it in
Chromium (Playwright, Debian's ``/usr/bin/chromium``) with the default models, and saves one 1280 × 800 PNG per
page, each quantised to 256 colours (a page is mostly flat colour: 35–55 KB a shot): the Architectures page's
block diagrams, the Parameters page's exact counts and first charts, the Playground after one Generate with the
trained miniatures, that run's routing on the Routing page, the Experiments page's leaderboard of the trained
zoo, and the Findings page's verdicts. Exits with status 1, naming the page, when a page shows an exception or a shot misses its content.

    .venv/bin/python tools/screenshots.py                     # re-makes docs/img/*.png
    .venv/bin/python tools/screenshots.py --out /tmp/shots    # somewhere else
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.ui import ARGS, CHROMIUM, Server  # noqa: E402  (after the path)  the browser benchmark's server and Chromium flags

OUT = ROOT / "docs" / "img"
WIDTH, HEIGHT = 1280, 800
#: colours of a saved shot (an adaptive palette; flat UI colours survive it)
COLOURS = 256
MAIN = "[data-testid='stMain']"
#: no "Deploy" button or developer menu in the pictures
SERVER_ARGS = ("--client.toolbarMode", "minimal")


@dataclass(frozen=True)
class Shot:
    """One screenshot: the file name, the page's URL path, and what to do there before the shot."""

    name: str
    path: str
    prepare: Callable


def _scroll_to(page, text: str) -> None:
    """Scroll the main column so that the first visible text holding ``text`` is near the top."""
    page.locator(MAIN).get_by_text(text).first.wait_for()
    page.evaluate(
        """(text) => {
        const main = document.querySelector("[data-testid='stMain']");
        const el = [...main.querySelectorAll('*')].find(
            e => [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.includes(text)) && e.getClientRects().length);
        main.scrollTo(0, el.getBoundingClientRect().top + main.scrollTop - 70);
    }""",
        text,
    )


def _architectures(page) -> None:
    page.locator(".js-plotly-plot").first.wait_for()
    _scroll_to(page, "Block diagrams")


def _parameters(page) -> None:
    page.locator(".js-plotly-plot").nth(1).wait_for()
    _scroll_to(page, "Exact counts from the model")


def _playground(page) -> None:
    page.get_by_role("button", name="Generate").wait_for()
    page.wait_for_timeout(1000)  # the first render settles (stale twins of widgets vanish)
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Timings").first.wait_for(timeout=120_000)
    _scroll_to(page, "Link to this run")


def _routing(page) -> None:
    page.locator(".main-svg").first.wait_for()
    _scroll_to(page, "top-1 expert of each token in each MoE layer")


def _experiments(page) -> None:
    page.get_by_role("tab", name="Leaderboard of the trained zoo").click()
    page.locator(".js-plotly-plot:visible").first.wait_for()
    _scroll_to(page, "Every catalog architecture's miniature")


def _findings(page) -> None:
    page.locator(f"{MAIN} [data-testid='stMarkdown'] table").first.wait_for()
    page.get_by_text("Add your own model").wait_for()  # the sidebar is drawn once the page (static figures) is done
    _scroll_to(page, "The article's claims and the published results")


#: in this order: the Routing page follows the Playground's run (same browser session)
SHOTS = (
    Shot("architectures", "/", _architectures),
    Shot("parameters", "/parameters", _parameters),
    Shot("playground", "/playground", _playground),
    Shot("routing", "/routing", _routing),
    Shot("experiments", "/experiments", _experiments),
    Shot("findings", "/findings", _findings),
)


def _idle(page, timeout_ms: int = 60_000) -> None:
    """Wait until the app has finished its rerun (Streamlit's running indicator is gone) and paint settles."""
    page.wait_for_function(
        "!document.querySelector(\"[data-testid='stStatusWidget'], [data-stale='true']\")", timeout=timeout_ms
    )
    page.wait_for_timeout(800)


def quantise(path: Path, colours: int = COLOURS) -> int:
    """Rewrite a PNG with an adaptive palette of ``colours``; returns its new size in bytes."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(
            colors=colours, method=Image.Quantize.MAXCOVERAGE, kmeans=2, dither=Image.Dither.NONE
        )
    small.save(path, optimize=True)
    return path.stat().st_size


def capture(base_url: str, out: Path, chromium: str = CHROMIUM, shots: tuple[Shot, ...] = SHOTS) -> list[Path]:
    """Take ``shots`` of the dashboard at ``base_url`` into ``out``; raises SystemExit naming a broken page."""
    from playwright.sync_api import Error, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.set_default_timeout(60_000)
            for shot in shots:
                if shot.path == "/":
                    page.goto(base_url + shot.path)
                else:  # through the menu, as a user goes: the session (and the Playground's run) stays
                    page.locator(f"[data-testid='stSidebarNav'] a[href$='{shot.path}']").first.click()
                try:
                    shot.prepare(page)
                    _idle(page)
                except Error as e:
                    raise SystemExit(f"{shot.name}: {str(e).splitlines()[0]}") from None
                if page.locator("[data-testid='stException']").count():
                    raise SystemExit(f"{shot.name}: the page shows an exception")
                page.mouse.move(WIDTH - 1, HEIGHT - 1)  # no hover: no chart toolbar, no sidebar collapse arrow
                page.wait_for_timeout(300)
                path = out / f"{shot.name}.png"
                page.screenshot(path=str(path))
                print(
                    f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {quantise(path) / 1024:.0f} KB"
                )
                saved.append(path)
        finally:
            browser.close()
    return saved


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the PNGs (default docs/img/)")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", CHROMIUM), help="the Chromium executable")
    a = ap.parse_args(argv)
    if not Path(a.chromium).exists():
        raise SystemExit(f"no Chromium at {a.chromium} (Debian: apt-get install chromium)")
    server = Server(args=SERVER_ARGS)
    try:
        capture(server.url, a.out.resolve(), a.chromium)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
