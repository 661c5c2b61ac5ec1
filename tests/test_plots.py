"""plots/: every figure renders to a decodable PNG (and SVG), with one cell per grid point and
labelled axes. Checks inspect the matplotlib objects, not pixels."""

import io

import matplotlib.image
import numpy as np
import pytest
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from ctxprobe import plots
from ctxprobe.plots import html
from ctxprobe.plots.style import to_bytes

LENGTHS = [1024, 2048, 4096, 8192, 16384]
DEPTHS = [0.0, 25.0, 50.0, 75.0, 100.0, 10.0][:4]


def _decode_png(fig):
    pixels = matplotlib.image.imread(io.BytesIO(to_bytes(fig, "png", dpi=40)), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    return pixels


def _image(ax):
    images = [c for c in ax.get_children() if isinstance(c, AxesImage)]
    assert len(images) == 1
    return images[0]


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def _ticks(labels):
    return [t.get_text() for t in labels]


@pytest.mark.parametrize("length,label", [
    (1024, "1K"), (4096, "4K"), (1 << 20, "1M"), (10 << 20, "10M"), (1536, "1.5K"),
    (128000, "128K"), (1_000_000, "1M"), (300, "300"), (25489.7, "24.9K"), (3 << 19, "1.5M")])
def test_length_labels(length, label):
    assert plots.length_label(length) == label


def test_text_output_labels_lengths_as_figures_do_without_loading_matplotlib():
    """The end-of-run summary and the figures label a length one way (1000 -> '1K', which the
    summary used to print as '1000'); the summary's labels never load matplotlib."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from ctxprobe.sweep import summarize; "
            "print(summarize([dict(family='niah', length=n, depth=50.0, sample=0, score=1.0, error=None) "
            "for n in (1000, 1536, 4096)])); print('matplotlib' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": ""})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["depth"] + [plots.length_label(n) for n in (1000, 1536, 4096)] \
        == ["depth", "1K", "1.5K", "4K"]
    assert "effective length (score >= 85%): 4K" in done.stdout
    assert lines[-1] == "False"


def test_heatmap_one_annotated_cell_per_grid_point():
    score = np.linspace(0, 1, len(DEPTHS) * len(LENGTHS)).reshape(len(DEPTHS), len(LENGTHS))
    score[1, 4] = np.nan  # a grid point with no data
    n = np.full(score.shape, 3)
    n[1, 4] = 0
    fig = plots.heatmap(LENGTHS, DEPTHS, score, n, title="niah")
    _decode_png(fig)
    ax = fig.axes[0]
    assert _image(ax).get_array().shape == (len(DEPTHS), len(LENGTHS))
    texts = _texts(ax)
    assert texts.count("n=3") == score.size - 1 and texts.count("no data") == 1
    assert "0%" in texts and "100%" in texts
    assert _ticks(ax.get_xticklabels()) == ["1K", "2K", "4K", "8K", "16K"]
    assert _ticks(ax.get_yticklabels()) == ["0%", "25%", "50%", "75%"]
    assert "length" in ax.get_xlabel() and "depth" in ax.get_ylabel()
    assert ax.get_title(loc="left") == "niah"
    assert len(fig.axes) == 2  # the heatmap and its colour bar


def test_heatmap_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        plots.heatmap(LENGTHS, DEPTHS, np.zeros((2, 2)), np.zeros((2, 2)))


@pytest.mark.filterwarnings("error")  # an interval at infinity must not reach matplotlib as NaN
def test_falloff_log_axis_band_threshold_and_markers():
    mean = np.array([1.0, 0.9, 0.7, 0.3, 0.1])
    fig = plots.falloff(LENGTHS, mean, mean - 0.1, np.minimum(mean + 0.1, 1), threshold=0.85,
                        markers=[plots.Marker("threshold rule", 2048),
                                 plots.Marker("L50", 6000.0, 5000.0, 7000.0),
                                 plots.Marker("L85", float("inf"), 9000.0, float("inf")),
                                 plots.Marker("L95", float("inf"), float("inf"), float("inf"))],
                        fit=(np.geomspace(1024, 16384, 20), np.linspace(1, 0, 20)))
    _decode_png(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert _ticks(ax.get_xticklabels()) == ["1K", "2K", "4K", "8K", "16K"]
    assert "length" in ax.get_xlabel() and ax.get_ylabel() == "score"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "threshold 85%" in legend and "threshold rule = 2K" in legend and "L50 = 5.86K" in legend
    assert "95% interval" in legend and "logistic fit" in legend and "L85 > 16K" in legend
    np.testing.assert_allclose(ax.lines[0].get_ydata(), mean)


def test_grid_has_one_heatmap_per_family():
    panels = [(f, LENGTHS, DEPTHS, np.full((4, 5), 0.5), np.ones((4, 5), int)) for f in ("a", "b", "c")]
    fig = plots.grid(panels, title="run")
    _decode_png(fig)
    heatmaps = [ax for ax in fig.axes if ax.get_visible() and ax.images]
    assert [ax.get_title(loc="left") for ax in heatmaps[:3]] == ["a", "b", "c"]
    assert sum(1 for ax in heatmaps if ax.get_xlabel()) == 3  # three heatmaps (+ colour bar)
    with pytest.raises(ValueError, match="at least one"):
        plots.grid([])


def test_delta_heatmap_marks_significant_and_boxes_regressions():
    delta = np.array([[0.0, -0.3, 0.1], [-0.02, 0.0, -0.5]])
    significant = np.array([[False, True, False], [True, False, True]])
    regressed = np.array([[False, True, False], [False, False, True]])
    fig = plots.delta_heatmap(["niah", "vt"], LENGTHS[:3], delta, significant, regressed,
                              np.full((2, 3), 8))
    _decode_png(fig)
    ax = fig.axes[0]
    assert _image(ax).get_array().shape == (2, 3)
    starred = sorted(t for t in _texts(ax) if t.endswith("*"))
    assert starred == ["-2*", "-30*", "-50*"]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(boxes) == 2
    assert _ticks(ax.get_yticklabels()) == ["niah", "vt"]


def test_history_two_panels():
    effective = {"threshold rule": ([4096, 2048, np.nan], None, None),
                 "L50": ([9000, 5000, 12000], [8000, 4000, 10000], [10000, 6000, 14000])}
    fig = plots.history(["v1", "v2", "v3"], effective, LENGTHS, np.random.default_rng(0).random((3, 5)))
    _decode_png(fig)
    top, bottom = fig.axes[:2]
    assert top.get_yscale() == "log" and len(top.lines) == 2
    assert len(bottom.lines) == len(LENGTHS)
    assert _ticks(bottom.get_xticklabels()) == ["v1", "v2", "v3"]
    assert "effective length" in top.get_ylabel() and bottom.get_xlabel() == "run"


def test_history_without_any_effective_length_reading():
    fig = plots.history(["v1"], {"threshold rule": ([np.nan], None, None)}, LENGTHS[:2], [[0.1, 0.0]])
    _decode_png(fig)
    assert fig.axes[0].get_yscale() == "linear" and "no effective-length" in _texts(fig.axes[0])[0]


def test_logprob_heatmap_scale_ends_at_zero():
    logprob = -np.arange(20, dtype=float).reshape(4, 5) / 4
    fig = plots.logprob_heatmap(LENGTHS, DEPTHS, logprob, np.ones((4, 5), int))
    _decode_png(fig)
    image = _image(fig.axes[0])
    # One fixed scale (issue 19): from 0 nats down to the floor, whatever this run's worst cell.
    assert image.norm.vmax == 0.0 and image.norm.vmin == plots.style.LOGPROB_FLOOR
    assert "-4.75" in _texts(fig.axes[0])


def test_save_png_and_svg(tmp_path):
    fig = plots.heatmap(LENGTHS[:2], DEPTHS[:2], np.ones((2, 2)), np.ones((2, 2), int))
    png, svg = plots.save(fig, tmp_path / "h.png"), plots.save(fig, tmp_path / "h.svg")
    assert matplotlib.image.imread(png).shape[2] in (3, 4)
    assert "<svg" in svg.read_text()
    with pytest.raises(ValueError, match=".png or .svg"):
        plots.save(fig, tmp_path / "h.jpg")


def test_html_escapes_text_and_inlines_images():
    fig = plots.heatmap(LENGTHS[:2], DEPTHS[:2], np.ones((2, 2)), np.ones((2, 2), int))
    page = html.page("<b>t</b>", html.pre("<script>alert(1)</script>"), html.image(fig, 'a"b'),
                     html.table(["<th>"], [["<td>&"]]))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;t&lt;/b&gt;" in page and "&lt;td&gt;&amp;" in page and 'alt="a&quot;b"' in page
    assert 'src="data:image/png;base64,' in page and "http" not in page


def test_delta_heatmap_key_does_not_overlap_a_long_title():
    # The key used to sit right of the title, on the same line: "run-b minus run-a" ran into it.
    fig = plots.delta_heatmap(["niah"], LENGTHS[:3], np.array([[0.0, -0.01, -0.04]]),
                              np.array([[False, True, True]]), percent=False,
                              title="builtin-923469ee minus builtin-b8bb537c")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # lay out (constrained) before measuring
    ax = fig.axes[0]
    texts = [t for t in [ax.title, ax._left_title, ax._right_title, *ax.texts, ax.xaxis.label,
                         *ax.get_xticklabels()] if t.get_text()]
    key = next(t for t in texts if t.get_text().startswith("* significantly"))
    for other in texts:
        if other is not key:
            assert not key.get_window_extent(renderer).overlaps(other.get_window_extent(renderer)), \
                other.get_text()
