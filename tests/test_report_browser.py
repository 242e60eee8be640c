"""The tiny run's report.html in a real browser (Debian's chromium, headless, no network).

A sample text that is a `<script>` is planted in the evaluation the report shows; the page must
load without console errors, every embedded image must decode and be non-empty, the script must
stay text (no <script> element in the rendered DOM, the title unchanged), and the screenshot must
show a page, not a blank. `.ci/run` installs chromium; elsewhere the test is skipped without it
unless PREFALIGN_BROWSER_TEST=required.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest
from helpers import run

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
PLANTED = "<script>document.title='EXECUTED'; document.body.innerHTML='';</script>"


def chromium(page, tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh profile per start
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.as_uri(),
    ]
    return run(command, timeout=120)  # chromium's helper processes end with it


@pytest.mark.skipif(
    BROWSER is None and os.environ.get("PREFALIGN_BROWSER_TEST") != "required", reason="no chromium (CI installs it)"
)
def test_report_html_renders_in_chromium_with_texts_as_text(tiny_run, tmp_path, cli):
    from PIL import Image

    assert BROWSER, "PREFALIGN_BROWSER_TEST=required but no chromium on PATH"
    root = tmp_path / "run"
    shutil.copytree(tiny_run[0], root)
    run0 = root / "eval" / "original" / "run-00.parquet"
    df = pd.read_parquet(run0)
    df.loc[df.reward.idxmax(), "text"] = PLANTED  # shown as the original's highest-reward example
    df.to_parquet(run0, index=False)
    (root / "report.meta.json").unlink()  # the report is redone from the planted text
    cli("report", "tiny", "--set", f"run_dir={root}", "--set", "evaluate.runs=2", "--update")
    page = root / "report.html"

    dom = chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>prefalign report: tiny</title>" in dom.stdout  # the planted script did not run
    assert "<script" not in dom.stdout and "&lt;script&gt;document.title" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', dom.stdout)
    # rewards + training per strategy, two frontiers, trajectories, judges, judges along training
    assert len(images) == 2 * 3 + 5
    for data in images:
        width, height = Image.open(io.BytesIO(base64.b64decode(data))).size
        assert width > 100 and height > 100

    shot = tmp_path / "report.png"
    proc = chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,2400")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = Image.open(shot).convert("RGB")
    colours = pixels.getcolors(maxcolors=1 << 24)
    assert pixels.size == (1200, 2400) and len(colours) > 200  # text, tables and plots, not a blank
