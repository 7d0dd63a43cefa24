"""The pictures logged during training (drawn without a matplotlib Figure): the alpha heatmap,
the alpha trajectories, their PNG encoding, and the TensorBoard hint."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from spectral_monitor.sinks.plots import (
    colour_bar_ticks,
    heatmap_range,
    layer_colours,
    render_alpha_heatmap,
    render_alpha_trajectories,
)
from spectral_monitor.sinks.png import encode_png, with_png
from spectral_monitor.sinks.raster import Canvas, rgb255
from spectral_monitor.sinks.tensorboard_sink import tensorboard_hint


def _count(picture: np.ndarray, colour: tuple[float, float, float]) -> int:
    """Pixels of exactly this colour (0..1 floats, as layer_colours gives them)."""
    want = (np.asarray(colour) * 255).round().astype(np.uint8)
    return int(np.all(np.abs(picture.astype(int) - want) <= 1, axis=-1).sum())


def _trajectories(n_layers: int = 3, n_steps: int = 12) -> tuple[list[str], list[int], np.ndarray]:
    rng = np.random.default_rng(0)
    layers = [f"block.{i}.linear" for i in range(n_layers)]
    steps = list(range(0, 50 * n_steps, 50))
    alpha = (
        2.5 + np.arange(n_layers)[:, None] + np.cumsum(rng.normal(0, 0.1, (n_layers, n_steps)), 1)
    )
    return layers, steps, alpha


@pytest.mark.parametrize("count", [1, 5, 10, 15, 20, 48])
def test_every_layer_gets_its_own_colour(count: int) -> None:
    colours = layer_colours(count)
    assert len(colours) == count
    assert len({tuple(np.round(c, 3)) for c in colours}) == count


def test_trajectories_draw_each_layer_in_its_colour_and_unreliable_points_hollow() -> None:
    layers, steps, alpha = _trajectories()
    colours = layer_colours(len(layers))
    trusted = render_alpha_trajectories(layers, steps, alpha, np.ones(alpha.shape, bool))
    doubted = render_alpha_trajectories(layers, steps, alpha, np.zeros(alpha.shape, bool))
    assert trusted.dtype == np.uint8 and trusted.ndim == 3 and trusted.shape[2] == 3
    assert trusted.shape == doubted.shape
    for colour in colours:
        # Every layer is in the picture (line, dots, legend), and a hollow ring has less of its
        # colour than a filled dot: unreliable points are told apart.
        assert _count(doubted, colour) > 50
        assert _count(trusted, colour) > _count(doubted, colour) + 4 * len(steps)
    # A NaN (skipped layer) breaks the line: less of that layer's colour.
    gap = alpha.copy()
    gap[0, 4:8] = np.nan
    broken = render_alpha_trajectories(layers, steps, gap, np.ones(alpha.shape, bool))
    assert _count(broken, colours[0]) < _count(trusted, colours[0])


def test_alpha_mean_is_the_bold_black_line() -> None:
    layers, steps, alpha = _trajectories()
    plain = render_alpha_trajectories(layers, steps, alpha)
    with_mean = render_alpha_trajectories(layers, steps, alpha, mean=alpha.mean(axis=0))
    black = (0.0, 0.0, 0.0)
    # A line 3.4 px wide across the 640 px chart, and its legend entry.
    assert _count(with_mean, black) > _count(plain, black) + 3 * 600


def test_trajectories_legend_takes_more_columns_for_many_layers() -> None:
    widths = []
    for n in (4, 30, 200):
        layers, steps, alpha = _trajectories(n, 6)
        widths.append(render_alpha_trajectories(layers, steps, alpha).shape[1])
    assert widths[0] < widths[1] < widths[2]
    assert widths[2] < 2500  # capped at four columns, the rest counted, not drawn


def test_trajectories_take_empty_and_single_step_histories() -> None:
    one = render_alpha_trajectories(["a"], [7], np.array([[3.0]]), mean=[3.0])
    none = render_alpha_trajectories(["a"], [0, 1], np.full((1, 2), np.nan), mean=[np.nan] * 2)
    assert one.shape[0] > 100 and none.shape[0] > 100


def test_heatmap_cells_red_below_two_blue_above_grey_where_not_trusted() -> None:
    alpha = np.array([[1.2, 5.0, 4.0, np.nan]])
    unreliable = np.array([[False, False, True, False]])
    picture = render_alpha_heatmap(["a"], [0, 1, 2, 3], alpha, unreliable).astype(int)
    r, b = picture[..., 0], picture[..., 2]
    red, blue = (r - b > 50), (b - r > 50)
    hatch = np.all(picture == rgb255("#a6a6a6").astype(int), axis=-1)
    ys, xs = np.nonzero(red)
    first_red = xs.min()
    band = np.unique(ys[xs < first_red + 10])  # the cell row, not the colour bar
    columns = {
        name: np.nonzero(mask[band].any(axis=0) & (np.arange(mask.shape[1]) >= first_red))[0]
        for name, mask in (("red", red), ("blue", blue), ("hatch", hatch))
    }
    # Left to right: the red cell (alpha 1.2), the blue one (5.0), then the two grey cells
    # (unreliable 4.0 and no alpha); the colour bar, further right, is red and blue only.
    assert columns["red"].min() < columns["blue"].min() < columns["hatch"].min()
    width = columns["hatch"].max() - columns["hatch"].min() + 1
    assert width >= 2 * (columns["hatch"].min() - columns["blue"].min()) - 2  # two cells wide


@pytest.mark.parametrize("values", [[5.0, 4.0, 1.45], [15.0, 4.0, 0.3], [3.0, 3.0, 3.0]])
def test_colour_bar_numbers_both_halves_without_overlap(values: list[float]) -> None:
    vmin, vmax = heatmap_range(np.array(values))
    ticks = colour_bar_ticks(vmin, vmax)
    assert {2.0, 6.0} <= set(ticks)
    assert any(t < 2.0 for t in ticks) and all(vmin <= t <= vmax for t in ticks)
    centre = 2.0
    positions = [
        0.5 * (t - vmin) / (centre - vmin)
        if t < centre
        else 0.5 + 0.5 * (t - centre) / (vmax - centre)
        for t in ticks
    ]
    assert min(np.diff(sorted(positions))) >= 0.06
    assert render_alpha_heatmap(["a"], [0, 1, 2], np.array([values])).ndim == 3


def test_png_round_trip_is_exact() -> None:
    layers, steps, alpha = _trajectories()
    picture = render_alpha_trajectories(layers, steps, alpha)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(picture))).convert("RGB"))
    assert np.array_equal(decoded, picture)
    carried = with_png(picture)
    assert carried.png == encode_png(picture) and np.array_equal(carried, picture)
    assert carried[:10].png is None  # a slice is another picture
    with pytest.raises(ValueError, match="uint8"):
        encode_png(picture.astype(np.float32))


def test_canvas_text_is_drawn_and_refuses_no_size() -> None:
    canvas = Canvas(120, 40)
    width, height = canvas.text(4, 20, "alpha 2.0")
    assert 40 < width < 100 and 8 < height < 20
    dark = (canvas.to_array() < 128).all(axis=-1)
    assert dark[:, :4].sum() == 0 and dark.sum() > 30
    with pytest.raises(ValueError, match="positive size"):
        Canvas(0, 10)


def test_tensorboard_hint_is_the_full_command() -> None:
    hint = tensorboard_hint("my runs")
    assert hint.splitlines()[0] == "tensorboard --logdir 'my runs' --samples_per_plugin images=100"
    assert "_smoothingWeight=0" in hint
