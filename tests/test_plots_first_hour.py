"""Report and plots a user can trust (issue 19 item 7), checked on the rendered matplotlib
objects: the palette, the fixed log-probability scale, the delta plot's tolerance, history's
bounds, the marks on the heatmap, the run name in every image and every legend entry drawn."""

import numpy as np
from matplotlib.colors import to_rgb

from ctxprobe import plots
from ctxprobe.plots.style import DELTA_CMAP, SCORE_CMAP, to_bytes

LENGTHS = [1024, 2048, 4096, 8192]
DEPTHS = [0.0, 50.0, 100.0]

# Viénot, Brettel & Mollon (1999): what a deuteranope sees, on linear RGB.
_DEUTERANOPIA = np.array([[0.29275, 0.70725, 0.0], [0.29275, 0.70725, 0.0], [-0.02234, 0.02234, 1.0]])


def _linear(rgb):
    c = np.asarray(to_rgb(rgb))
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _luminance(rgb):
    return float(_linear(rgb) @ [0.2126, 0.7152, 0.0722])


def _deuteranope_distance(a, b):
    return float(np.linalg.norm(_DEUTERANOPIA @ _linear(a) - _DEUTERANOPIA @ _linear(b)))


def test_the_score_palette_is_ordered_by_lightness_and_its_ends_differ_without_red_green():
    # Red -> amber -> green had its lightest colour (amber) in the middle: 50% looked "best".
    lightness = [_luminance(SCORE_CMAP(x)) for x in np.linspace(0, 1, 33)]
    assert all(b > a for a, b in zip(lightness, lightness[1:]))
    assert _deuteranope_distance(SCORE_CMAP(0.0), SCORE_CMAP(1.0)) > 0.5
    # The delta scale's two ends (worse, better) stay apart for a deuteranope too.
    assert _deuteranope_distance(DELTA_CMAP(0.0), DELTA_CMAP(1.0)) > 0.25


def test_the_heatmap_uses_the_palette():
    fig = plots.heatmap(LENGTHS, DEPTHS, np.full((3, 4), 0.5), np.ones((3, 4), int))
    assert fig.axes[0].images[0].get_cmap().name == SCORE_CMAP.name == "viridis"


def _colour_of(fig, value):
    image = fig.axes[0].images[0]
    return image.get_cmap()(image.norm(value))


def test_log_probabilities_have_one_scale_across_reports():
    # Two runs: one whose worst cell is -2.2 nats, one whose worst is -40 nats. The same value
    # gets the same colour in both, and nearby values get nearby colours.
    mild = np.array([[-0.1, -0.5, -2.12, -2.2]] * 3)
    harsh = np.array([[-0.1, -2.16, -10.0, -40.0]] * 3)
    a = plots.logprob_heatmap(LENGTHS, DEPTHS, mild, np.ones((3, 4), int))
    b = plots.logprob_heatmap(LENGTHS, DEPTHS, harsh, np.ones((3, 4), int))
    assert np.allclose(_colour_of(a, -2.12), _colour_of(b, -2.12))
    assert np.allclose(_colour_of(a, -2.12), _colour_of(b, -2.16), atol=0.03)
    assert not np.allclose(_colour_of(b, -2.16), _colour_of(b, -10.0), atol=0.1)
    assert np.allclose(_colour_of(b, -40.0), _colour_of(b, -1000.0))   # below the floor: the floor


def test_the_delta_plot_paints_changes_inside_min_drop_as_unchanged():
    delta = np.array([[-0.04, -0.30, 0.03]])   # nats: only -0.30 exceeds the tolerated 0.05
    fig = plots.delta_heatmap(["niah"], LENGTHS[:3], delta, np.array([[True, True, False]]),
                              np.array([[False, True, False]]), percent=False, min_drop=0.05)
    image = fig.axes[0].images[0]
    neutral = DELTA_CMAP(0.5)
    shown = [image.get_cmap()(image.norm(v)) for v in np.asarray(image.get_array())[0]]
    assert np.allclose(shown[0], neutral) and np.allclose(shown[2], neutral)
    assert _deuteranope_distance(shown[1], neutral) > 0.1
    assert any("within the tolerated 0.05 nats" in t.get_text() for t in fig.axes[0].texts)
    # Without a tolerance, a tiny change on its own is not a full-strength colour either way.
    tiny = plots.delta_heatmap(["niah"], LENGTHS[:1], np.array([[-0.004]]), np.array([[False]]),
                               percent=False, min_drop=0.05)
    img = tiny.axes[0].images[0]
    assert np.allclose(img.get_cmap()(img.norm(np.asarray(img.get_array())[0, 0])), neutral)
    to_bytes(fig)


def _point(name, scores_by_length):
    from ctxprobe.analysis.effective_length import effective_length
    from ctxprobe.commands.history import RunPoint

    by_length = {x: np.array(v, float) for x, v in scores_by_length.items()}
    return RunPoint(name, "2026-01-01", "m", 8, effective_length(by_length),
                    {x: float(np.mean(v)) for x, v in by_length.items()})


def test_history_draws_readings_beyond_the_tested_lengths_as_bounds():
    from ctxprobe.commands.history import history_figure

    tested = [4096, 65536, 1 << 20]
    points = [_point("never-fell", {x: [1, 1, 1, 1] for x in tested}),
              _point("failed-at-once", {x: [0, 0, 0, 0] for x in tested}),
              _point("falls", {4096: [1, 1, 1, 1], 65536: [1, 1, 0, 0], 1 << 20: [0, 0, 0, 0]})]
    fig = history_figure(points, "niah")
    top = fig.axes[0]
    labels = [t.get_text() for t in top.texts]
    assert ">1M" in labels and "<4K" in labels
    lines = {line.get_label(): line for line in top.get_lines()}
    rule, l50 = lines["threshold rule"], lines["L50 (fit, 95% band)"]
    # The series lines hold values only inside the tested lengths: no point above 1M or below 4K.
    for line in (rule, l50):
        ys = np.asarray(line.get_ydata(), float)
        assert np.all(np.isnan(ys) | ((ys >= 4096) & (ys <= 1 << 20)))
    assert np.isnan(l50.get_ydata()[0]) and np.isnan(rule.get_ydata()[1])
    # The bounds are drawn as hollow triangles at the tested ends.
    marks = {(line.get_marker(), float(line.get_ydata()[0])) for line in top.get_lines()
             if line.get_marker() in ("v", "^")}
    assert ("^", float(1 << 20)) in marks and ("v", 4096.0) in marks
    to_bytes(fig)


def _labelled(ax):
    artists = list(ax.get_lines()) + list(ax.patches) + list(ax.collections)
    return {a.get_label(): a for a in artists if not a.get_label().startswith("_")}


def test_every_legend_entry_of_the_falloff_plot_is_drawn_inside_the_axes():
    lengths = [4096, 8192, 16384, 32768]
    markers = [plots.Marker("threshold rule", 8192),
               plots.Marker("L85 (fit)", 1500.0, 900.0, 2500.0),      # below the tested lengths
               plots.Marker("L50 (fit)", 6000.0, 4096.0, 8192.0),     # the 4K-8K band
               plots.Marker("L99 (fit)", 3e7)]                        # above them
    fig = plots.falloff(lengths, [1, 0.9, 0.4, 0.1], [0.9, 0.8, 0.3, 0.0], [1, 1, 0.5, 0.2],
                        threshold=0.85, markers=markers)
    ax = fig.axes[0]
    x0, x1 = ax.get_xlim()
    drawn = _labelled(ax)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend and set(legend) == set(drawn)
    for label, artist in drawn.items():
        assert artist.get_visible() and (artist.get_alpha() is None or artist.get_alpha() >= 0.1), label
        if hasattr(artist, "get_xdata") and any(label.startswith(m.label + " ") for m in markers):
            x = float(np.asarray(artist.get_xdata())[0])
            # strictly inside, with room on both sides (a line on the edge is clipped away)
            assert x0 * 1.1 < x < x1 / 1.1, (label, x, x0, x1)
    band = drawn["L50 (fit) 95% interval"]
    assert (band.get_x(), band.get_x() + band.get_width()) == (4096.0, 8192.0)   # axvspan's Rectangle
    assert "L85 (fit) < 4K" in legend and "L99 (fit) > 32K" in legend
    to_bytes(fig)


def _texts(fig):
    return [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]


def test_the_demo_heatmap_marks_the_effective_length_and_the_designed_limit_and_names_the_run(
        tmp_path, monkeypatch):
    import ctxprobe.analysis.report as report
    from ctxprobe.demo import DESIGNED_LIMIT, run_demo
    from ctxprobe.plots.heatmap import length_column

    saved, imaged = [], []
    real_save, real_image = plots.save, report.html.image
    monkeypatch.setattr(plots, "save", lambda fig, path: (saved.append(fig), real_save(fig, path))[1])
    monkeypatch.setattr(report.html, "image", lambda fig, alt: (imaged.append((alt, fig)), real_image(fig, alt))[1])
    r = run_demo(tmp_path, lengths="2k,4k,8k", depths="50", samples=1, progress=False)
    assert r.effective_length == 4096       # the built-in model holds to ~5.8K tokens
    [heatmap] = saved
    ax = heatmap.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    effective, designed = lines["effective length 4K"], lines["designed limit 5.72K"]
    assert effective.get_xdata()[0] == 1.5                               # right edge of the 4K column
    assert designed.get_xdata()[0] == length_column(DESIGNED_LIMIT, [2048, 4096, 8192])
    assert 1.5 < designed.get_xdata()[0] < 2.0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["effective length 4K", "designed limit 5.72K"]
    assert f"run {r.run_name}" in _texts(heatmap)
    # Every image of the report names the run, and its heatmap marks the effective length.
    assert imaged and all(f"run {r.run_name}" in _texts(fig) for _, fig in imaged), [a for a, _ in imaged]
    report_heatmap = dict(imaged)["niah depth x length heatmap"]
    assert "effective length 4K" in [line.get_label() for line in report_heatmap.axes[0].get_lines()]



def test_the_compare_plot_names_both_runs(tmp_path, runner, monkeypatch):
    import ctxprobe.plots.style as plot_style
    from ctxprobe.cli import main
    from ctxprobe.store import Store

    db = tmp_path / "c.db"
    with Store(db) as store:
        for name, broken in (("base-run", None), ("new-run", 4096)):
            run = store.create_run(name=name, model_spec="tiny", model_fingerprint="fp", backend={},
                                   tokenizer_fingerprint="tok", version="0.1.0", command="c")
            for length in (1024, 4096):
                for sample in range(6):
                    store.put_cell(run.id, dict(family="niah", length=length, depth=50.0, sample=sample,
                                                seed=0, probe_hash=f"{length}-{sample}",
                                                score=float(length != broken)))
    saved = []
    real_save = plot_style.save
    monkeypatch.setattr(plot_style, "save", lambda fig, path: (saved.append(fig), real_save(fig, path))[1])
    result = runner.invoke(main, ["compare", "base-run", "new-run", "--db", str(db),
                                  "-o", str(tmp_path / "delta.png")])
    assert result.exit_code == 1, result.output
    [fig] = saved
    assert any("base-run" in t and "new-run" in t for t in (x.get_text() for x in fig.texts))
