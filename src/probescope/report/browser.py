"""Open a report in headless Chromium: screenshot it and read the page's own figure checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None (install Debian's `chromium`)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@dataclass
class PageCheck:
    figures: int
    figures_ok: int
    errors: int
    console_errors: list[str]
    screenshot: Path | None
    attrs: dict[str, str] = field(default_factory=dict)  # every data-* attribute the page left on <body>
    dom: str = ""  # the page's DOM after its scripts ran


def check_page(page: str | Path, screenshot: str | Path | None = None, width: int = 1400, height: int = 2400,
               timeout: float = 90) -> PageCheck:
    """Load `page` headless; count figures drawn with non-zero size and script errors; save a screenshot.

    The page's own checks (and anything else a script writes to `document.body.dataset`) come back in `attrs`."""
    chrome = find_chromium()
    if chrome is None:
        raise FileNotFoundError("no Chromium found: `apt-get install chromium` (Debian) to check pages in a browser")
    url = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory() as prof:
        base = [chrome, *FLAGS, f"--user-data-dir={prof}", f"--window-size={width},{height}"]
        dom = subprocess.run(base + ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=timeout)
        if screenshot is not None:
            subprocess.run(base + [f"--screenshot={Path(screenshot).resolve()}", url], capture_output=True, timeout=timeout)
    body = re.search(r"<body([^>]*)>", dom.stdout)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1))) if body else {}
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and ("Error" in line or "error" in line)]
    shot = Path(screenshot) if screenshot is not None and Path(screenshot).exists() else None
    return PageCheck(int(attrs.get("figures", -1)), int(attrs.get("figures-ok", -1)), int(attrs.get("errors", -1)),
                     console, shot, attrs, dom.stdout)
