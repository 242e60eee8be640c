"""report.html: report.md as one self-contained page; model output in it is text, never markup."""

from __future__ import annotations

import base64

import pytest

from prefalign.report.html import render

# The smallest valid PNG (1x1, transparent).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def test_texts_with_markup_are_escaped_and_plots_embedded(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(PNG)
    markdown = "# r\n\n| m | v |\n|---|---|\n| x | 1 |\n\n![a](plots/a.png)\n\n- (+1.00) '<script>alert(1)</script><img src=x onerror=alert(2)>'\n"
    page = render(markdown, tmp_path, {"name": "t", "note": "<b>not bold</b>"}, "cpu", "title <i>")
    assert "<script" not in page and "<img src=x" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>not bold</b>" not in page and "&lt;b&gt;not bold&lt;/b&gt;" in page
    assert page.count('<img src="data:image/png;base64,') == 1 and base64.b64encode(PNG).decode() in page
    assert "<table>" in page and "<td>x</td>" in page and "<title>title &lt;i&gt;</title>" in page


def test_training_figures_of_one_kind_share_their_y_ranges(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    from prefalign.report import plots as report

    def trained(name, losses, accuracies):
        path = tmp_path / name
        path.mkdir()
        history = [
            {"step": 5 * (i + 1), "loss": v, "rewards/accuracies": a}
            for i, (v, a) in enumerate(zip(losses, accuracies))
        ]
        (path / "train.json").write_text(json.dumps({"log_history": history + [{"step": 99, "train_runtime": 1.0}]}))
        return SimpleNamespace(name=name, path=path)

    low, high = trained("low", [0.7, 0.5], [0.4, 0.6]), trained("high", [3.0, 2.0, 1.0], [0.5, 0.9, 1.0])
    limits = report.curve_limits([low, high], report.DPO_CURVES)
    assert set(limits) == {"loss", "rewards/accuracies"}  # no margins logged: that panel keeps its own range
    assert limits["loss"][0] < 0.5 and limits["loss"][1] > 3.0 and limits["rewards/accuracies"][1] > 1.0

    drawn = {}
    monkeypatch.setattr(
        report, "save_figure", lambda fig, out: drawn.setdefault(out.name, [ax.get_ylim() for ax in fig.axes])
    )
    report.plot_training([low], "a", tmp_path / "a.png", limits=limits)
    report.plot_training([high], "b", tmp_path / "b.png", limits=limits)
    assert drawn["a.png"] == drawn["b.png"]  # the two figures compare by eye
    assert drawn["a.png"][0] == pytest.approx(limits["loss"])
    report.plot_training([low], "own", tmp_path / "own.png")
    assert drawn["own.png"][0][1] < 1.0  # without shared limits: its own range
