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


def trained(folder, name, losses, accuracies):
    """A trained model as the report's plots see it: its train.json's logged steps."""
    import json
    from types import SimpleNamespace

    path = folder / name
    path.mkdir()
    history = [
        {"step": 5 * (i + 1), "loss": v, "rewards/accuracies": a} for i, (v, a) in enumerate(zip(losses, accuracies))
    ]
    (path / "train.json").write_text(json.dumps({"log_history": history + [{"step": 99, "train_runtime": 1.0}]}))
    return SimpleNamespace(name=name, path=path)


def test_training_figures_of_one_kind_share_their_y_ranges(tmp_path, monkeypatch):
    from prefalign.report import plots as report

    low = trained(tmp_path, "low", [0.7, 0.5], [0.4, 0.6])
    high = trained(tmp_path, "high", [3.0, 2.0, 1.0], [0.5, 0.9, 1.0])
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


def test_training_curves_of_few_points_show_their_points(tmp_path, monkeypatch):
    """A short training logs one or two steps: marked, they read as data, not as an empty axis or a trend."""
    from prefalign.report import plots as report

    lines = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, out: lines.setdefault(out.name, fig.axes[0].get_lines()))
    for n in (1, 2, 40):
        model = trained(tmp_path, f"m{n}", [1.0 - 0.01 * i for i in range(n)], [0.5] * n)
        report.plot_training([model], "t", tmp_path / f"{n}.png")
        (line,) = lines[f"{n}.png"]  # the loss panel's one curve
        assert len(line.get_xdata()) == n
        if n <= report.FEW_POINTS:
            assert line.get_marker() == "o" and line.get_markersize() >= 3
        else:  # a long curve stays a plain line
            assert line.get_marker() in ("None", None, "")
    assert lines["1.png"][0].get_markersize() > lines["2.png"][0].get_markersize()  # one point: larger
