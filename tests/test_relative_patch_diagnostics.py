"""Relative patch's diagnostic (`ssl-zoo diagnose`, formerly `ssl-zoo context-check`): does a
relative-patch model need its centre patch? And how a method's diagnostics reach the card."""

import json

import numpy as np
import pytest

from helpers import write_image_folder
from ssl_zoo.methods.relative_patch_diagnostics import CONDITIONS, ablate_centre, context_check

FILL = np.array([120.0, 110.0, 100.0], np.float32)


def _batches(n=64, batch=16, seed=0):
    """Patches whose centre and neighbour both carry the label as their brightness (label * 20)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, n)
    patches = np.repeat((labels * 20.0)[:, None, None, None, None], 2, 1) * np.ones((1, 2, 4, 4, 3))
    return [(patches[i:i + batch].astype("float32"), labels[i:i + batch]) for i in range(0, n, batch)]


def _reader(view):
    def model(x, training=False):
        label = np.clip(np.rint(np.asarray(x)[:, view].mean(axis=(1, 2, 3)) / 20), 0, 7).astype(int)
        return np.eye(8)[label]
    return model


def test_ablations_replace_only_the_centre():
    patches, _ = _batches()[0]
    assert ablate_centre(patches, "as_drawn", FILL) is patches
    blank = ablate_centre(patches, "centre_blanked", FILL)
    np.testing.assert_array_equal(blank[:, 0], np.broadcast_to(FILL, blank[:, 0].shape))
    np.testing.assert_array_equal(blank[:, 1], patches[:, 1])
    other = ablate_centre(patches, "centre_from_other_image", FILL)
    np.testing.assert_array_equal(other[1:, 0], patches[:-1, 0])
    np.testing.assert_array_equal(other[:, 1], patches[:, 1])
    with pytest.raises(ValueError, match="condition must be one of"):
        ablate_centre(patches, "nothing", FILL)


def test_a_model_reading_the_centre_falls_to_chance_and_one_ignoring_it_does_not():
    centre = context_check(_reader(0), _batches(), FILL, chance=1 / 8)
    assert set(centre["accuracy"]) == set(CONDITIONS) and centre["examples"] == 64
    assert centre["accuracy"]["as_drawn"] == 1.0
    assert centre["accuracy"]["centre_blanked"] < 0.3 and centre["accuracy"]["centre_from_other_image"] < 0.4
    assert centre["context_share"] > 0.8
    neighbour = context_check(_reader(1), _batches(), FILL, chance=1 / 8)
    assert all(a == 1.0 for a in neighbour["accuracy"].values()) and neighbour["context_share"] == 0.0


@pytest.mark.parametrize("command", ["diagnose", "context-check"])
def test_cli_on_a_run_folder(tmp_path, capsys, command):
    """End to end on a (untrained) relative-patch run: recorded recipe, image folder, safe-mode load,
    pretext batches from the training pipeline. `context-check` is the command's former name."""
    from ssl_zoo.cli import main
    from ssl_zoo.methods import method_from_recipe
    from ssl_zoo.train.recipe import recipe_from_dict

    write_image_folder(tmp_path, n=12, size=40)
    recipe = recipe_from_dict({
        "name": "tiny_relpatch",
        "method": {"name": "relative_patch", "patch_size": 8, "gap": 3, "jitter": 2, "head_hidden_units": [16]},
        "backbone": {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar", "image_size": 8},
        "data": {"source": "folder:images", "image_size": 36, "eval_split": "train"},
    })
    run = tmp_path / "run"
    run.mkdir()
    method_from_recipe(recipe).build_model().save(run / "pretext_model.keras")
    (run / "run.json").write_text(json.dumps({"recipe": recipe.to_dict()}))
    out = tmp_path / "diagnostics.json"
    assert main([command, str(run), "--data-dir", str(tmp_path), "--max-examples", "8",
                 "--set", "method.placement=grid", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert list(written) == ["context_check"]
    report = written["context_check"]
    assert report["examples"] == 8 and report["split"] == "train"
    assert report["method"]["placement"] == "grid" and report["overrides"] == ["method.placement=grid"]
    assert all(0.0 <= a <= 1.0 for a in report["accuracy"].values())
    assert '"context_share"' in capsys.readouterr().out


def test_a_method_without_diagnostics_is_refused(tmp_path, caplog):
    from ssl_zoo.cli import main
    from ssl_zoo.train.recipe import recipe_from_dict

    recipe = recipe_from_dict({"name": "r", "method": {"name": "rotnet"},
                               "backbone": {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar"}})
    (tmp_path / "run.json").write_text(json.dumps({"recipe": recipe.to_dict()}))
    assert main(["diagnose", str(tmp_path)]) == 2
    assert "'rotnet', which has no diagnostics (methods with some: ['bigan', 'colorization', 'context_encoder', 'relative_patch', 'split_brain', 'super_resolution'])" in caplog.text


REPORT = {"accuracy": {"as_drawn": 0.3335, "centre_from_other_image": 0.2810, "centre_blanked": 0.2757},
          "chance": 0.125, "examples": 3925, "context_share": 0.2774, "data": "folder:imagenette-96px", "split": "val"}


def test_the_card_line_is_the_methods_own():
    from ssl_zoo.cards import diagnostic_lines
    from ssl_zoo.methods import METHODS

    meta = {"method": {"name": "relative_patch"}, "diagnostics": {"context_check": REPORT}}
    lines = METHODS["relative_patch"].card_diagnostics(meta["diagnostics"])
    assert diagnostic_lines(meta) == lines and len(lines) == 1
    assert lines[0].startswith("- Does it use its context? `ssl-zoo context-check` on 3925 held-out images "
                               "(`val` of folder:imagenette-96px): 33.35 % as drawn")
    # Metadata written before the generic section kept the report at the top level.
    assert diagnostic_lines({"method": {"name": "relative_patch"}, "context_check": REPORT}) == lines
    # Another method renders no line for it; nor does a method the registry does not know.
    assert diagnostic_lines({**meta, "method": {"name": "rotnet"}}) == []
    assert diagnostic_lines({**meta, "method": {"name": "not_a_method"}}) == []
