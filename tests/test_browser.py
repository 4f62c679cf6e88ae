"""The report in a real browser: headless Chromium loads it with no console errors.

Skipped, with the reason, when Chromium is not installed (``make install`` installs it when
it can: as root, with apt-get). Screenshots are saved next to the test's temporary files and
copied to ``/tmp/deepdoctor-report*.png`` for a person to look at.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import report_cases as rc
from PIL import Image

from deepdoctor.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--dump-dom",
]
TIMEOUT = 60  # seconds; a page loads in 1-3 s, so this only catches a hung browser
# Every figure has a line or bar in the plots' orange, which nothing else on the page uses:
# a text-only page shows 0 such pixels, the smallest figure (a thin line) over 600.
PLOT_ORANGE = (0xE6, 0x9F, 0x00)
MIN_ORANGE_PIXELS = 300
COLOUR_TOLERANCE = 12  # summed |RGB difference|: survives PNG scaling and anti-aliasing
CONSOLE = re.compile(r":CONSOLE[:(]")  # every console message, CSP violations included


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _browser()
    if path is None:
        pytest.skip(
            "headless Chromium is not installed, so the page cannot be checked in a "
            "browser; run `make install` as root (it runs apt-get install chromium)"
        )
    return path


def open_page(browser: str, page: Path, screenshot: Path, height: int) -> tuple[str, list[str]]:
    """Load ``page``; return its DOM and every console message, and save a screenshot."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                browser,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={screenshot}",
                f"--window-size=1280,{height}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, [line for line in proc.stderr.splitlines() if CONSOLE.search(line)]


def orange_pixels(png: Path) -> int:
    with Image.open(png) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    return int((np.abs(rgb - PLOT_ORANGE).sum(axis=-1) <= COLOUR_TOLERANCE).sum())


def test_console_check_catches_errors(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><body><section id="x">x</section>'
        '<script>console.error("boom")</script></body></html>'
    )
    _, messages = open_page(chromium, page, tmp_path / "bad.png", 300)
    assert len(messages) == 1 and '"boom"' in messages[0]
    assert orange_pixels(tmp_path / "bad.png") == 0


@pytest.mark.parametrize(
    "case, sections, height",
    [
        ("diagnosis", ["findings", "gradient-flow", "activation-health", "curves"], 3600),
        ("checkup", ["findings", "checkup", "complexity"], 2400),
        ("treatment", ["findings", "treatment", "curves"], 2200),
    ],
)
def test_report_loads_in_chromium_without_console_errors(
    chromium: str, tmp_path: Path, case: str, sections: list[str], height: int
) -> None:
    data: dict[str, Any] = {
        "diagnosis": rc.real_diagnosis,
        "checkup": rc.checkup_dict,
        "treatment": rc.treatment_dict,
    }[case]()
    page = write_report(data, tmp_path / "report.html")
    shot = tmp_path / f"report-{case}.png"
    dom, messages = open_page(chromium, page, shot, height)
    assert messages == []
    assert re.findall(r'<section id="([^"]+)"', dom) == sections
    for section in sections:  # the navigation links to each section
        assert f'href="#{section}"' in dom
    assert orange_pixels(shot) > MIN_ORANGE_PIXELS  # the figures were decoded and drawn
    name = "deepdoctor-report.png" if case == "diagnosis" else f"deepdoctor-report-{case}.png"
    shutil.copy(shot, Path(tempfile.gettempdir()) / name)
