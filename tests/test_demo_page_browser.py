"""The demo's index.html in a real headless browser (Chromium): every image loads, and the red
failure banner shows at the top exactly when the quality gate failed. Skipped without Chromium
(Debian/Ubuntu: `apt-get install -y chromium`)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import GEOMETRIES, sphere_scan

from ceds_deploy.demo import Verdict
from ceds_deploy.demo.page import FAILURE_BANNER_ID, write_index
from ceds_deploy.qa.preview import write_preview

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for path in map(shutil.which, BROWSERS) if path), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium binary found (apt-get install -y chromium)")

# Run inside the page once everything has loaded; the result lands in a data attribute that
# --dump-dom prints.
CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(
    i => ({src: i.getAttribute('src'), loaded: i.complete && i.naturalWidth > 0}));
  const banner = document.getElementById('BANNER_ID');
  let shown = null;
  if (banner) {
    const box = banner.getBoundingClientRect(), style = getComputedStyle(banner);
    shown = {visible: box.height > 0 && style.display !== 'none' && style.visibility !== 'hidden',
             top: box.top + window.scrollY, border: style.borderTopColor};
  }
  document.body.setAttribute('data-check', JSON.stringify({images, banner: shown}));
});
</script>""".replace("BANNER_ID", FAILURE_BANNER_ID)

FAILED = Verdict(
    False,
    ("held-out mean Dice 0.120 is below 0.5", "no tumour found in case_0"),
    ("training too short: 4 steps instead of the recipe's 400",),
    "ceds demo --out ceds-demo --fresh",
)


def demo_folder(folder: Path, verdict: Verdict) -> Path:
    """A demo folder as `ceds demo` leaves it, for the page's sake: real previews, a curves image."""
    image, label = sphere_scan(GEOMETRIES["axial_lps"])
    confidence = np.where(label.array > 0, 0.6, 1.0).astype(np.float32)
    rows = []
    for i in range(2):
        case = f"case_{i}"
        write_preview(folder / "segment" / f"{case}_preview.png", image, label.array, confidence, label.array, case)
        rows.append(
            {
                "case": case,
                "dice": 0.8 if verdict.passed else 0.12,
                "tumour_ml": 0.0 if i == 0 and not verdict.passed else 7.2,
                "mean_confidence": 0.6,
                "needs_review": True,
                "review_reason": "low confidence",
                "preview": f"segment/{case}_preview.png",
            }
        )
    (folder / "run").mkdir(parents=True)
    shutil.copy(folder / "segment" / "case_0_preview.png", folder / "run" / "curves.png")
    return write_index(folder, rows, [("train", 12.5, "4 of 4 steps")], verdict)


def browse(page: Path, tmp_path: Path, *args: str) -> str:
    command = [
        BROWSER,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        *args,
        page.as_uri(),
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root otherwise
    done = subprocess.run(command, capture_output=True, encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def page_check(index: Path, tmp_path: Path) -> dict:
    checked = index.with_name("_browser_check.html")  # same folder: the same relative links
    checked.write_text(index.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = browse(checked, tmp_path, "--dump-dom")
    found = re.search(r'data-check="([^"]*)"', dom)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.parametrize("verdict", [FAILED, Verdict(True)], ids=["failed", "passed"])
def test_page_in_a_browser(tmp_path, verdict):
    index = demo_folder(tmp_path / "demo", verdict)
    check = page_check(index, tmp_path)
    assert len(check["images"]) == 3  # curves and two previews
    assert all(image["loaded"] for image in check["images"]), check["images"]
    if verdict.passed:
        assert check["banner"] is None
    else:
        assert check["banner"]["visible"] and check["banner"]["top"] < 100  # at the top of the page
        assert check["banner"]["border"] == "rgb(204, 0, 0)"  # red


@pytest.mark.parametrize("verdict", [FAILED, Verdict(True)], ids=["failed", "passed"])
def test_screenshot_is_red_at_the_top_only_on_failure(tmp_path, verdict):
    from matplotlib.image import imread

    index = demo_folder(tmp_path / "demo", verdict)
    shot = tmp_path / "page.png"
    browse(index, tmp_path, f"--screenshot={shot}", "--window-size=1400,2000")
    pixels = imread(shot)[..., :3]
    red = (pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.15) & (pixels[..., 2] < 0.15)
    if verdict.passed:
        assert red[:150].sum() < 50
    else:
        assert red[:150].sum() > 500  # the banner's red border in the first 150 rows of the page
