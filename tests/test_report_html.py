"""report.html: report.md as one self-contained page; model output in it is text, never markup."""

from __future__ import annotations

import base64

from prefalign.stages.report_html import render

# The smallest valid PNG (1x1, transparent).
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def test_texts_with_markup_are_escaped_and_plots_embedded(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(PNG)
    markdown = "# r\n\n| m | v |\n|---|---|\n| x | 1 |\n\n![a](plots/a.png)\n\n- (+1.00) '<script>alert(1)</script><img src=x onerror=alert(2)>'\n"
    page = render(markdown, tmp_path, {"name": "t", "note": "<b>not bold</b>"}, "cpu", "title <i>")
    assert "<script" not in page and "<img src=x" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>not bold</b>" not in page and "&lt;b&gt;not bold&lt;/b&gt;" in page
    assert page.count('<img src="data:image/png;base64,') == 1 and base64.b64encode(PNG).decode() in page
    assert "<table>" in page and "<td>x</td>" in page and "<title>title &lt;i&gt;</title>" in page
