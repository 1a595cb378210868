"""Pictures beside the cards: retrieval maths, the filters grid, the pretext tasks, the card's section,
the command."""

import numpy as np
import pytest

from helpers import TINY_BACKBONE


def test_retrieval_finds_nearest_others_and_counts_same_class_neighbours():
    from ssl_zoo.pictures import retrieval

    # Two tight clusters on opposite directions; image 4 is labelled against its cluster.
    features = np.array([[1, 0.01], [1, 0.02], [1, 0.03], [-1, 0.01], [-1, 0.02], [-1, 0.03]], np.float32)
    labels = np.array([0, 0, 0, 1, 0, 1])
    nearest, precision = retrieval(features * np.array([[3], [1], [2], [1], [5], [1]]), labels, k=2)
    assert all(i not in row for i, row in enumerate(nearest))  # never itself
    assert all(set(row) <= {0, 1, 2} for row in nearest[:3]) and all(set(row) <= {3, 4, 5} for row in nearest[3:])
    expected = np.mean([(labels[row] == labels[i]).mean() for i, row in enumerate(nearest)])
    assert precision == pytest.approx(expected) and 0 < precision < 1


def test_filters_skip_a_fixed_front_and_the_card_links_pictures_found_beside_it(tmp_path):
    from ssl_zoo.backbones import build_backbone
    from ssl_zoo.pictures import draw_filters, first_learned_conv, pictures_beside

    backbone = build_backbone({**TINY_BACKBONE, "grey": True})
    assert first_learned_conv(backbone).name == "stem_conv"
    assert draw_filters(backbone, tmp_path / "e_filters.png", "e").stat().st_size > 1000
    (tmp_path / "e_pretext.png").write_bytes(b"png")
    assert pictures_beside(tmp_path, "e") == {"pretext": "e_pretext.png", "filters": "e_filters.png"}


@pytest.mark.data
def test_cli_draws_an_entrys_pictures_and_relinks_its_card(data_dir, tmp_path):
    from ssl_zoo.cli import main

    assert main(["pictures", "rotnet_resnet18w025_cifar10", "--data-dir", str(data_dir), "--out", str(tmp_path),
                 "--num-images", "200"]) == 0
    card = (tmp_path / "rotnet_resnet18w025_cifar10.md").read_text()
    for kind in ("filters", "retrieval", "pretext"):
        assert (tmp_path / f"rotnet_resnet18w025_cifar10_{kind}.png").stat().st_size > 1000
        assert f"](rotnet_resnet18w025_cifar10_{kind}.png)" in card
    assert card.index("## Pictures") < card.index("## Method")


def _method(name, **fields):
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.train.recipe import recipe_from_dict

    return method_from_recipe(recipe_from_dict({
        "name": "picture", "method": {"name": name, **fields},
        "backbone": {k: v for k, v in TINY_BACKBONE.items() if k != "image_size"},
        "data": {"source": "arrays", "image_size": 32}}))


def test_rotnet_picture_shows_each_image_in_the_rotation_its_row_names():
    from ssl_zoo.data.sources import ArraySource

    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    picture = _method("rotnet").pretext_picture(ArraySource(images), "train", 32)
    assert [row.label for row in picture.rows] == ["label 0: 0 deg", "label 1: 90 deg", "label 2: 180 deg",
                                                   "label 3: 270 deg"]
    upright = picture.rows[0].images
    for r, row in enumerate(picture.rows):
        np.testing.assert_array_equal(row.images, np.rot90(upright, r, axes=(1, 2)))


def test_deepcluster_picture_rows_are_the_clusters_of_the_backbone_features():
    """Three solid colours (with a little noise) and a 'backbone' whose features are the mean colour:
    each row is one colour's images, the largest cluster first; without a backbone there is none."""
    from ssl_zoo.data.sources import ArraySource

    rng = np.random.default_rng(0)
    # Ten images per cluster are read: 30 for k = 3, the colours mixed in the source's order.
    colours = rng.permutation(np.repeat([[250, 10, 10], [10, 250, 10], [10, 10, 250]], [15, 10, 5], axis=0))
    images = np.clip(colours[:, None, None, :] + rng.normal(0, 3, (30, 32, 32, 3)), 0, 255).astype(np.uint8)
    method = _method("deepcluster", num_clusters=3, pca_dim=2)  # the plane the three colours span
    assert method.pretext_picture(ArraySource(images), "train", 32) is None
    picture = method.pretext_picture(ArraySource(images), "train", 32,
                                     backbone=lambda x, training: np.asarray(x, np.float32).mean(axis=(1, 2)))
    assert [row.label for row in picture.rows] == ["15 images", "10 images", "5 images"]
    for row, colour, shown in zip(picture.rows, range(3), (8, 8, 5)):
        assert len(row.images) == shown
        assert (np.argmax(row.images.mean(axis=(1, 2)), axis=1) == colour).all()
    assert "k = 3 clusters" in picture.title


def test_sela_picture_rows_are_equal_size_labels_of_the_backbone_features():
    """Three colours, 15 / 10 / 5 images, the reds shading towards blue: k-means finds the colours,
    the equipartition gives each label 10, taking the five bluest reds to the blue label."""
    from ssl_zoo.data.sources import ArraySource

    rng = np.random.default_rng(0)
    red = np.stack([np.full(15, 250), np.full(15, 10), np.linspace(0, 150, 15)], axis=1)
    green = np.array([10, 250, 10]) + rng.normal(0, 20, (10, 3))
    blue = np.array([10, 10, 250]) + rng.normal(0, 20, (5, 3))
    colours = rng.permutation(np.concatenate([red, green, blue]))
    images = np.clip(colours[:, None, None, :] + rng.normal(0, 3, (30, 32, 32, 3)), 0, 255).astype(np.uint8)
    method = _method("sela", num_clusters=3)
    assert method.pretext_picture(ArraySource(images), "train", 32) is None
    picture = method.pretext_picture(ArraySource(images), "train", 32,
                                     backbone=lambda x, training: np.asarray(x, np.float32).mean(axis=(1, 2)))
    assert [row.label for row in picture.rows] == ["15 -> 10", "10 -> 10", "5 -> 10"]
    mean_colour = [row.images.mean(axis=(1, 2)) for row in picture.rows]
    assert (np.argmax(mean_colour[0], axis=1) == 0).all() and (np.argmax(mean_colour[1], axis=1) == 1).all()
    moved = mean_colour[2][np.argmax(mean_colour[2], axis=1) == 0]
    assert len(moved) > 0 and moved[:, 2].min() > mean_colour[0][:, 2].max()  # the bluest reds
    assert "k = 3 equal-size labels" in picture.title


def test_jigsaw_picture_puts_the_tiles_back_where_the_label_says(monkeypatch):
    from ssl_zoo.image_grid import mosaic

    method = _method("jigsaw", tile_size=8, num_permutations=10)
    labels = np.array([3, 7])
    # Tile i of each example shows the number of the grid cell it was cut from.
    tiles = np.stack([np.broadcast_to(method.permutation_array[label][:, None, None, None], (9, 8, 8, 3))
                      for label in labels]).astype(np.float32) * 20.0
    monkeypatch.setattr(method, "pretext_batch", lambda *a, **k: {"inputs": tiles, "targets": labels})
    given, solved = method.pretext_picture(None, "train", 32).rows
    cells = np.broadcast_to(np.arange(9.0)[:, None, None, None] * 20.0, (9, 8, 8, 3))
    np.testing.assert_array_equal(solved.images, np.stack([mosaic(cells)] * 2))
    assert given.captions[0] == "class 3: " + "".join(map(str, method.permutation_array[3]))


def test_relative_patch_picture_places_the_neighbour_where_its_label_says(monkeypatch):
    from ssl_zoo.methods.relative_patch import neighbour_name
    from ssl_zoo.pretext.relative_patch import OFFSETS

    method = _method("relative_patch", patch_size=8, gap=2, jitter=1)
    labels = np.arange(8)
    pairs = np.empty((8, 2, 8, 8, 3), np.float32)
    pairs[:, 0], pairs[:, 1] = 50.0, 200.0  # centre, neighbour
    monkeypatch.setattr(method, "pretext_batch", lambda *a, **k: {"inputs": pairs, "targets": labels})
    centre, neighbour, placed = method.pretext_picture(None, "train", 32).rows
    assert neighbour.captions == [f"class {t}: {neighbour_name(OFFSETS[t])}" for t in labels]
    assert neighbour_name((-1, 1)) == "above right" and neighbour_name((1, 0)) == "below"
    step = 8 + 2  # a cell and the mosaic's gap
    for image, (dr, dc) in zip(placed.images, OFFSETS):
        assert image[step + 1, step + 1, 0] == 50.0  # the centre cell
        assert image[(1 + dr) * step + 1, (1 + dc) * step + 1, 0] == 200.0
        assert (image == 200.0).all(axis=-1).sum() == 64  # one neighbour, nowhere else
