"""The run report page (ceds_deploy.qa.report_page): built from a realistic run folder (three
segmented phantoms with the previews `ceds segment --preview` draws, one failed case, one
skipped), checked as HTML and rendered in a real headless Chromium (skipped without one)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ceds_deploy.errors import OutputError
from ceds_deploy.inference.report import CaseRow, write_report
from ceds_deploy.qa.report_page import REPORT_PAGE, render_report_page, write_report_page

OK_CASES = ("phantom_000", "phantom_001", "phantom_002")
FAILED = ("broken_scan", "broken_scan.nii.gz: is truncated: the compressed data ends before the image")
SKIPPED = ("done_before", "outputs exist (use --overwrite to redo)")


def confidence_for(mask: np.ndarray, seed: int) -> np.ndarray:
    """A plausible confidence map: high inside the mass, falling off at its border, some noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(1 - mask)
    border = np.where(mask > 0, inside, outside)  # distance to the mass's boundary, either side
    return np.clip(0.55 + 0.12 * border + rng.normal(0, 0.05, mask.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """An output folder as `ceds segment --preview` leaves it: previews, report.csv/json (written
    by the real `write_report`), one case needing review, one failed, one skipped."""
    from ceds_deploy.qa.preview import write_preview
    from ceds_deploy.qa.review import assess
    from ceds_deploy.synthetic import make_case

    out = tmp_path_factory.mktemp("segment")
    rows = []
    for index, case in enumerate(OK_CASES):
        image, label = make_case(index, 0, "small")
        mask = label.array.astype(np.uint8)
        if index == 2:  # a poor prediction: half the mass, lower confidence
            mask[:, :, : mask.shape[2] // 2 + 3] = 0
        confidence = confidence_for(mask, index) * (0.7 if index == 2 else 1.0)
        write_preview(out / f"{case}_preview.png", image, mask, confidence, label=label.array, title=case)
        found = assess(mask, confidence, image.geometry.voxel_volume_ml, 0.5)
        rows.append(
            CaseRow(
                case=case,
                status="ok",
                input_path=f"/data/in/{case}.nii.gz",
                input_shape=str(image.shape),
                windows=8,
                tumour_ml=found.tumour_ml,
                mean_confidence=found.mean_confidence,
                low_confidence_fraction=found.low_confidence_fraction,
                needs_review=found.needs_review,
                review_reason=found.review_reason,
                seconds={"read": 0.21, "preprocess": 0.4, "infer": 2.5 + index, "restore": 0.3, "write": 0.5},
                backend="onnxruntime",
                device="cpu",
            )
        )
    rows.append(CaseRow(case=FAILED[0], status="failed", error=FAILED[1], input_path="/data/in/broken_scan.nii.gz"))
    rows.append(CaseRow(case=SKIPPED[0], status="skipped", error=SKIPPED[1]))
    run_info = {
        "model": "/models/ceds_teacher.onnx",
        "backend_choice": "no CUDA GPU: ONNX Runtime on the CPU",
        "options": {"overlap": 0.25, "blend": "gaussian", "tta": False, "shard": "0/1", "preview": True},
        "model_spec": {"roi_size": [96, 96, 64], "target_spacing": [1.5, 1.5, 3.0]},
        "backend": "onnxruntime (CPUExecutionProvider)",
        "device": "cpu",
        "input": "/data/in",
        "output": str(out),
        "batch_size": 2,
        "io_workers": 1,
        "interrupted": False,
    }
    write_report(out, rows, run_info)
    return out


def load(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


class Page(HTMLParser):
    """The parts of a page the tests look at: element ids in order, img srcs, external links,
    the case rows' ids in order, and <body>'s data attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.rows: list[str] = []
        self.body: dict[str, str] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "body":
            self.body = {k: v or "" for k, v in a.items()}
        if tag == "tr" and (a.get("id") or "").startswith("case-"):
            self.rows.append(a["id"][5:])
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(a[key])


def test_page_lists_failures_first_and_links_previews_relatively(run_folder):
    path = write_report_page(run_folder, load(run_folder))
    assert path == run_folder / REPORT_PAGE
    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.ids.index("failures") < page.ids.index("cases")
    assert FAILED[1] in text and SKIPPED[1] in text
    assert sorted(page.images) == sorted(f"{c}_preview.png" for c in OK_CASES)
    assert all((run_folder / src).is_file() for src in page.images)
    assert 'loading="lazy"' in text or "loading='lazy'" in text
    external = [link for link in page.links if re.match(r"^(https?:|//|file:|/)", link)]
    assert not external, external
    assert "<link" not in text and "@import" not in text, "no external style sheets"
    # Default order: failed, then those needing review, then the rest, skipped last.
    review = set(load(run_folder)["needs_review"])
    assert review, "the fixture has a case needing review"
    assert page.rows[0] == FAILED[0] and page.rows[-1] == SKIPPED[0]
    assert set(page.rows[1 : 1 + len(review)]) == review


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"cases": None, "run": None, "counts": None},
        {
            "cases": [
                {},
                {"status": "failed"},
                {"case": "x", "status": "ok", "tumour_ml": None, "mean_confidence": "nan"},
            ]
        },
        {"run": {"options": "not a dict", "interrupted": True}, "cases": [{"case": "y", "read_s": "fast"}]},
    ],
)
def test_missing_or_odd_fields_still_make_a_page(tmp_path, document):
    text = render_report_page(tmp_path, document)
    assert text.startswith("<!doctype html>") and text.endswith("</html>")
    Page(text)


def test_text_from_the_report_is_escaped(tmp_path):
    document = {"cases": [{"case": "<b>a</b>", "status": "failed", "error": "<script>alert(1)</script>"}]}
    text = render_report_page(tmp_path, document)
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_an_unwritable_folder_is_an_output_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="report.html: cannot be written"):
        write_report_page(tmp_path / "file", {})


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def headless(url: str, tmp_path: Path, *extra: str) -> str:
    """Run headless Chromium on `url` with `extra` flags; returns stdout (the DOM with --dump-dom)."""
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium binary on PATH (apt-get install chromium)")
    flags = [
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1800",
        "--virtual-time-budget=5000",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    result = subprocess.run([binary, *flags, *extra, url], capture_output=True, encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_chromium_loads_every_thumbnail(run_folder, tmp_path):
    path = write_report_page(run_folder, load(run_folder))
    page = Page(headless(path.as_uri(), tmp_path, "--dump-dom"))
    assert page.body.get("data-images-total") == "3"
    assert page.body.get("data-images-loaded") == "3", page.body
    assert page.body.get("data-images-broken", "") == ""
    assert page.ids.index("failures") < page.ids.index("cases")
    assert page.rows[0] == FAILED[0]


@pytest.mark.slow
@pytest.mark.parametrize("key, descending", [("tumour_ml", True), ("mean_confidence", False), ("case", False)])
def test_a_header_click_sorts(run_folder, tmp_path, key, descending):
    """`#sort=key[:desc]` clicks the column's header button once (twice for descending) on load."""
    document = load(run_folder)
    path = write_report_page(run_folder, document)
    url = path.as_uri() + f"#sort={key}" + (":desc" if descending else "")
    rows = Page(headless(url, tmp_path, "--dump-dom")).rows
    by_case = {c["case"]: c for c in document["cases"]}
    if key == "case":
        assert rows == sorted(by_case)
        return
    with_value = [c for c in by_case if by_case[c].get(key) is not None]
    expected = sorted(with_value, key=lambda c: by_case[c][key], reverse=descending)
    assert rows[: len(expected)] == expected
    assert set(rows[len(expected) :]) == set(by_case) - set(with_value), "missing values sort last"


@pytest.mark.slow
def test_chromium_screenshot(run_folder, tmp_path):
    """A screenshot of the page (kept in the run folder as report_screenshot.png for a look)."""
    path = write_report_page(run_folder, load(run_folder))
    shot = tmp_path / "shot.png"
    headless(path.as_uri(), tmp_path, f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000
    shutil.copy(shot, run_folder / "report_screenshot.png")
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 1800)
        # The failures box's red border shows near the top of the page.
        top = np.asarray(image.convert("RGB"))[:600]
        red = (top[..., 0] > 180) & (top[..., 1] < 80) & (top[..., 2] < 80)
        assert red.sum() > 200
