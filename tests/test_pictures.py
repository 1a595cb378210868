"""Pictures beside the cards: retrieval maths, the filters grid, the card's section, the command."""

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
    for kind in ("filters", "retrieval"):
        assert (tmp_path / f"rotnet_resnet18w025_cifar10_{kind}.png").stat().st_size > 1000
        assert f"](rotnet_resnet18w025_cifar10_{kind}.png)" in card
    assert card.index("## Pictures") < card.index("## Method")
