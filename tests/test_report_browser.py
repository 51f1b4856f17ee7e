"""report.html in a real browser: headless Chromium (Debian's ``chromium``) loads the page
without JavaScript errors, the token view is in the DOM, and it is visible in a screenshot.

The page is loaded with a probe script inserted at the top of its ``<head>``: it records
every uncaught error, unhandled rejection and ``console.error`` from then on, and after the
``load`` event moves the token-view section to the top of the page (so a screenshot of the
first screen shows it) and writes what it found into a ``<pre>`` that ``--dump-dom`` prints.
A control page with a broken script must be reported by the same probe, so the check cannot
pass by never seeing errors. The corpus text carries a ``<script>`` that would raise an error
if the report did not escape it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from test_tokenview import NASTY, nasty_edited  # noqa: F401 (the fixture)

from tokedit.analysis.html import PROB_COLOURS
from tokedit.analysis.report import ReportOptions, run_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (apt-get install chromium; .ci/run installs it)",
    ),
]

PROBE = """<script>(function(){
var errors=[];
window.addEventListener("error",function(e){errors.push(String(e.message||e.type))},true);
window.addEventListener("unhandledrejection",function(e){errors.push("rejection: "+e.reason)});
var ce=console.error;console.error=function(){
  errors.push("console.error: "+Array.prototype.join.call(arguments," "));ce.apply(console,arguments)};
window.addEventListener("load",function(){
  var s=document.getElementById("token-view"),out={errors:errors,section:!!s};
  if(s){
    document.body.insertBefore(s,document.body.firstChild);
    var r=s.getBoundingClientRect(),spans=s.querySelectorAll(".tv span[title]"),shaded=0;
    spans.forEach(function(x){var b=getComputedStyle(x).backgroundColor;
      if(b&&b!=="rgba(0, 0, 0, 0)"&&b!=="transparent")shaded++;});
    out.top=r.top;out.width=r.width;out.height=r.height;out.spans=spans.length;out.shaded=shaded;
    out.ins=s.querySelectorAll(".tv ins").length;out.del=s.querySelectorAll(".tv del").length;
    out.text=Array.prototype.map.call(s.querySelectorAll(".tv"),function(d){return d.textContent});
  }
  var p=document.createElement("pre");p.id="tokedit-probe";p.textContent=JSON.stringify(out);
  document.body.appendChild(p);
});})();</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _probed(page: Path) -> Path:
    """A copy of ``page`` beside it (relative image paths still resolve) with the probe."""
    html = page.read_text(encoding="utf-8")
    probed = page.with_name("_probed_" + page.name)
    probed.write_text(re.sub(r"<head>", "<head>" + PROBE, html, count=1), encoding="utf-8")
    return probed


def _probe(tmp_path: Path, page: Path) -> dict:
    res = _chromium(tmp_path, "--dump-dom", _probed(page).as_uri())
    m = re.search(r'<pre id="tokedit-probe">(.*?)</pre>', res.stdout, flags=re.S)
    assert m, f"no probe output (rc {res.returncode}): {res.stderr[-2000:]}"
    import html as html_lib

    return json.loads(html_lib.unescape(m.group(1)))


def test_probe_reports_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><head><title>x</title></head><body>"
        "<section id='token-view'><div class='tv'><span title='P'>a</span></div></section>"
        "<script>undefinedFunctionOnPurpose()</script>"
        "<script>console.error('logged on purpose')</script></body></html>"
    )
    probe = _probe(tmp_path, page)
    assert any("undefinedFunctionOnPurpose" in e for e in probe["errors"]), probe
    assert any("logged on purpose" in e for e in probe["errors"]), probe


def test_report_in_headless_chromium(tmp_path, tiny_scores, tiny_edited, nasty_edited):  # noqa: F811
    nasty_dir = nasty_edited[0]
    out = tmp_path / "R"
    run_report(
        [str(tiny_scores), str(tiny_edited), str(nasty_dir)],
        str(out),
        ReportOptions(labels=["scores", "edited", "nasty"], examples=2, example_chars=800),
    )
    page = out / "report.html"
    probe = _probe(tmp_path, page)
    assert probe["errors"] == [], probe["errors"]
    assert probe["section"] and probe["top"] < 50 and probe["width"] > 500 and probe["height"] > 300
    # 2 + 2 + 1 documents, hundreds of tokens, (nearly) all shaded; edits struck and inserted
    assert len(probe["text"]) == 5 and probe["spans"] > 500
    assert probe["shaded"] >= 0.9 * probe["spans"]
    assert probe["ins"] >= 2 and probe["del"] >= probe["ins"] + 1  # the nasty deletion
    # the corpus's <script> is text on the page, not code (else its error would be above)
    assert any("<script>undefinedFunctionFromTheCorpus()</script>" in t for t in probe["text"])
    assert any("\U0001f469\u200d\U0001f469\u200d\U0001f467" in t for t in probe["text"])

    shot = tmp_path / "token-view.png"
    res = _chromium(
        tmp_path, "--window-size=1200,1400", f"--screenshot={shot}", _probed(page).as_uri()
    )
    assert shot.is_file(), res.stderr[-2000:]
    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[:2] == (1400, 1200) and img.std() > 0.05  # not blank
    pixels = np.round(img.reshape(-1, 3) * 255).astype(int)

    def share_of(colour: str) -> float:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return float((np.abs(pixels - rgb).max(axis=1) <= 3).mean())

    # the token view's colours fill a visible part of the first screen
    assert sum(share_of(c) for c in PROB_COLOURS) > 0.02  # 0.047 in the run that added it
    keep = Path(__file__).resolve().parent.parent / ".pytest_cache" / "token-view.png"
    keep.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, keep)  # for a look by eye
