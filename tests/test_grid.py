"""make_grid.py and utils/grid.py (issue 4): epochs x conditions from a run's snapshots, the 126-condition atlas."""

import numpy as np
import pytest
from PIL import Image

import make_grid
from conftest import parse_error, run_script
from utils.grid import BACKGROUND, labelled_grid, tile_size

FAST = ["--num_inference_steps", "2"]
TILE = tile_size(32)  # the tiny run's 32 px samples, enlarged so that labels as wide as a tile stay legible


def margins(image, rows, cols):
    """(left, top) label margins: the tiles fill the bottom-right corner."""
    left, top = image.width - cols * TILE, image.height - rows * TILE
    assert left > 0 and top > 0, (image.size, rows, cols)
    return left, top


def has_ink(region):
    """Some pixel differs from the background: a label was drawn there."""
    return (np.asarray(region.convert("RGB")) != np.asarray(Image.new("RGB", (1, 1), BACKGROUND))[0, 0]).any()


def test_labelled_grid_layout():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    images = [Image.new("RGB", (32, 32), colour) for colour in colours]
    image = labelled_grid(images, 2, 3, row_labels=["row one", "more than 70"],
                          col_labels=["a", "Female Latino_Hispanic", "c"])
    left, top = margins(image, 2, 3)
    pixels = np.asarray(image)
    for i, colour in enumerate(colours):  # row-major, each tile exactly where the margins say
        r, c = divmod(i, 3)
        assert (pixels[top + r * TILE:top + (r + 1) * TILE, left + c * TILE:left + (c + 1) * TILE] == colour).all()
    for r in range(2):
        assert has_ink(image.crop((0, top + r * TILE, left, top + (r + 1) * TILE)))
    for c in range(3):
        assert has_ink(image.crop((left + c * TILE, 0, left + (c + 1) * TILE, top)))
    with pytest.raises(ValueError):
        labelled_grid(images, 2, 2)


@pytest.mark.e2e
def test_epochs_grid_as_a_user(tiny_run, tmp_path):
    output = tmp_path / "figures" / "grid.png"  # the parent folder is created
    result = run_script("make_grid.py", "--run_dir", tiny_run, "--conditions", "0", "1", "42", "--output", output,
                        *FAST)
    assert str(output) in result.stdout
    with Image.open(output) as image:
        left, top = margins(image, rows=3, cols=3)  # epochs 1, 2, 3 x conditions 0, 1, 42
        for r in range(3):  # "epoch E" beside every row, a description above every column
            assert has_ink(image.crop((0, top + r * TILE, left, top + (r + 1) * TILE)))
            assert has_ink(image.crop((left + r * TILE, 0, left + (r + 1) * TILE, top)))
        tiles = np.asarray(image.convert("RGB"))[top:, left:].astype(int)
    # One noise down a column, but each row is another snapshot: the images differ.
    assert not np.array_equal(tiles[:TILE, :TILE], tiles[2 * TILE:, :TILE])


@pytest.mark.e2e
def test_epochs_in_numeric_order_and_default_output(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = make_grid.parse_args(["--run_dir", tiny_run, "--epochs", "3", "1", "--conditions", "5",
                                 "--guidance_scale", "1", "--num_inference_steps", "1"])
    assert list(make_grid.find_snapshots(args.run_dir, args.epochs)) == [1, 3]
    output = make_grid.main(args)
    assert output.replace("\\", "/") == "assets/grid_epochs_1_3.png"
    with Image.open(tmp_path / output) as image:
        margins(image, rows=2, cols=1)


@pytest.mark.e2e
def test_atlas_is_9_ages_by_14_gender_race(tiny_run, tmp_path):
    output = make_grid.main(make_grid.parse_args(["--atlas", "--model", tiny_run, "--output", str(tmp_path / "a.png"),
                                                  "--num_inference_steps", "1", "--guidance_scale", "1",
                                                  "--batch_size", "63"]))
    with Image.open(output) as image:
        left, top = margins(image, rows=9, cols=14)
        assert has_ink(image.crop((0, top + 8 * TILE, left, image.height)))  # "more than 70"
        assert has_ink(image.crop((left + 13 * TILE, 0, image.width, top)))  # "Female Southeast Asian"


@pytest.mark.e2e
@pytest.mark.parametrize("flags, expected", [
    (["--run_dir", "{tmp}/missing"], "no run folder"),
    (["--run_dir", "{tmp}"], "no epoch_{E}/ snapshots"),
    (["--run_dir", "{run}", "--epochs", "2", "7"], "no snapshot for epoch 7"),
])
def test_bad_runs_exit_2_with_one_line(tiny_run, tmp_path, capsys, flags, expected):
    flags = [f.format(tmp=tmp_path, run=tiny_run) for f in flags]
    with pytest.raises(SystemExit) as exit_info:
        make_grid.main(make_grid.parse_args(flags))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("flags, expected", [
    (["--conditions", "126"], "valid: ids 0-125"),
    (["--atlas", "--epochs", "1"], "--atlas shows all 126"),
])
def test_bad_flags_exit_2_with_one_line(flags, expected):
    code, err = parse_error("make_grid.py", *flags)
    assert code == 2 and err.count("\n") == 1 and expected in err, err
