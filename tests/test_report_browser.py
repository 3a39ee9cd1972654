"""Open the HTML report in headless Chromium (Debian's `chromium`): it renders, sorts, loads.

Skipped where Chromium is not installed, unless GENBENCH_REQUIRE_CHROMIUM is set (CI sets
it and installs the package), so the check cannot silently disappear from CI.
"""

from __future__ import annotations

import base64
import hashlib
import html as htmllib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from genbench.reports.report import emit_report
from tests.test_report import DIGITS_PROTOCOL, model_files, write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("GENBENCH_REQUIRE_CHROMIUM"),
    reason="headless check needs Debian's chromium (apt-get install chromium)",
)

# Runs in the page after load: sizes of the results table and the images, and the row
# order after clicking the FID header once and twice (the page's own sorting script).
MEASURE = """
window.addEventListener("load", function () {
  var table = document.querySelector("table.sortable");
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var fid = heads.findIndex(function (h) { return h.textContent.indexOf("FID") === 0; });
  function models() {
    return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
      return r.cells[1].textContent;
    });
  }
  heads[fid].click();
  var ascending = models();
  heads[fid].click();
  var descending = models();
  var box = table.getBoundingClientRect();
  var images = Array.prototype.map.call(document.images, function (img) {
    var r = img.getBoundingClientRect();
    return {alt: img.alt, natural: [img.naturalWidth, img.naturalHeight],
            shown: [r.width, r.height]};
  });
  var out = document.createElement("pre");
  out.id = "measure";
  out.textContent = JSON.stringify({table: [box.width, box.height], images: images,
                                    ascending: ascending, descending: descending});
  document.body.appendChild(out);
});
""".strip()


def _chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    assert CHROMIUM, "GENBENCH_REQUIRE_CHROMIUM is set but chromium is not installed"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--mute-audio",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


def _with_measurement(page: str) -> str:
    """The page plus MEASURE, allowed by adding its hash to the page's own CSP."""
    digest = base64.b64encode(hashlib.sha256(MEASURE.encode()).digest()).decode()
    csp = re.search(r"script-src ('sha256-[^']+')", page)
    assert csp, "the report must restrict scripts to its own (by hash)"
    page = page.replace(csp.group(0), f"{csp.group(0)} 'sha256-{digest}'", 1)
    return page.replace("</body>", f"<script>{MEASURE}</script>\n</body>", 1)


@pytest.fixture
def report_html(tmp_path: Path) -> Path:
    small = {**DIGITS_PROTOCOL, "num_samples": 500, "seeds": "0-499"}
    runs = [
        write_run(tmp_path, "run-a-0001", [model_files("dcgan", 40.0), model_files("wide", 20.0)]),
        write_run(tmp_path, "run-b-0002", [model_files("deep", 30.0, protocol=small)]),
    ]
    out = tmp_path / "report"
    emit_report(runs, "html", out)
    return out / "report.html"


def test_headless_chromium_renders_the_report(report_html, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1280,2200", f"--screenshot={shot}", report_html.as_uri())
    with Image.open(shot) as img:
        assert img.size == (1280, 2200)
        grey = img.convert("L")
        dark = sum(grey.histogram()[:200])  # text, table rules, plot lines, samples
        colours = len(img.convert("RGB").getcolors(maxcolors=1 << 20) or [])
    assert dark > 0.02 * 1280 * 2200, "the page looks blank"
    assert colours > 100, "no plot or picture rendered (too few colours)"

    probe = tmp_path / "probe.html"
    probe.write_text(_with_measurement(report_html.read_text()))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S)
    assert found, "the measuring script did not run"
    m = json.loads(htmllib.unescape(found.group(1)))
    width, height = m["table"]
    assert width > 600 and height > 60  # header + 3 rows, laid out
    plots = [i for i in m["images"] if not i["alt"].startswith("samples of")]
    samples = [i for i in m["images"] if i["alt"].startswith("samples of")]
    assert len(plots) >= 4 and len(samples) == 3
    for img in plots + samples:  # every embedded PNG decoded and laid out
        assert min(img["natural"]) > 0 and min(img["shown"]) > 0, img
    # the page's own script ran under its CSP: sorting works both ways
    # (models named other than their generator show it: "wide (dcgan)")
    assert m["ascending"] == ["wide (dcgan)", "deep (dcgan)", "dcgan"]
    assert m["descending"] == ["dcgan", "deep (dcgan)", "wide (dcgan)"]


FIT = """
window.addEventListener("load", function () {
  var table = document.querySelector("table.sortable");
  var wrap = table.parentElement;
  var out = document.createElement("pre");
  out.id = "measure";
  out.textContent = JSON.stringify({
    page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
    wrapper: [wrap.scrollWidth, wrap.clientWidth],
    right: [table.getBoundingClientRect().right, document.body.getBoundingClientRect().right],
    heads: Array.prototype.map.call(table.tHead.rows[0].cells, function (c) {
      return c.textContent; }),
    first: Array.prototype.map.call(table.tBodies[0].rows[0].cells, function (c) {
      return c.textContent; })});
  document.body.appendChild(out);
});
""".strip()


def test_two_runs_fit_1400_px_without_horizontal_overflow(tmp_path, monkeypatch):
    # Two real-looking runs of all five models with every metric column filled (KID,
    # precision/recall, bits/dim) and sampling settings: the widest results table a smoke
    # comparison gives.
    extra = {
        "kid": {"value": 0.012345, "std": 0.00102},
        "pr": {"precision": 0.61234, "recall": 0.4321, "k": 3},
    }
    runs = []
    for run_id in ("smoke-20261203-162316-ad67", "smoke-20261203-170102-9f3e"):
        models = [
            model_files(name, 123.456, extra_metrics=extra, generator=name, nfe=nfe)
            for name, nfe in (("dcgan", 1), ("ddpm", 10), ("vdpm", 8), ("edm", 11), ("ddgan", 4))
        ]
        models[1]["metrics"]["extra"] = {"bits_per_dim": {"value": 3.7519}}
        models[2]["metrics"]["sample"].update(steps=8, guidance=1.5)
        runs.append(write_run(tmp_path, run_id, models))
    out = tmp_path / "report"
    emit_report(runs, "html", out)
    page = (out / "report.html").read_text()
    monkeypatch.setattr(sys.modules[__name__], "MEASURE", FIT)
    probe = tmp_path / "probe.html"
    probe.write_text(_with_measurement(page))
    dom = _chromium(
        "--window-size=1400,1000", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()
    ).stdout
    found = re.search(r'<pre id="measure">(.*?)</pre>', dom, re.S)
    assert found, "the measuring script did not run"
    m = json.loads(htmllib.unescape(found.group(1)))
    assert m["page"][0] <= m["page"][1] == 1400, m  # no page scroll bar
    assert m["wrapper"][0] <= m["wrapper"][1], m  # the table's own scroller has nothing to do
    assert m["right"][0] <= m["right"][1] + 0.5, m  # inside the body's column
    # Shortened and merged: the run's tag, one model column, no constant device column.
    assert m["heads"][:3] == ["run", "model", "train steps"] and "device" not in m["heads"]
    assert m["first"][:2] == ["ad67", "dcgan"]
