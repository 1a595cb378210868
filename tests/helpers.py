"""Small builders shared by the training and distribution tests."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ssl_zoo.train.recipe import recipe_from_dict

TINY_BACKBONE = {"arch": "resnet", "depth": 18, "width": 0.125, "stem": "cifar", "image_size": 16}


def tiny_recipe(**train):
    return recipe_from_dict(
        {
            "name": "tiny_rotnet",
            "method": {"name": "rotnet", "head_hidden_units": [16], "image_size": 16},
            "backbone": dict(TINY_BACKBONE),
            "data": {"source": "folder:images", "image_size": 16, "eval_split": None, "shuffle_buffer": 64},
            "train": {"epochs": 1, "global_batch": 8, "seed": 0, "log_every": 1, "checkpoint_every": 2, **train},
            "optimizer": {"name": "sgd", "learning_rate": 0.1, "warmup_epochs": 0.0},
        }
    )


def tiny_recipe_toml(path, **train) -> None:
    """Writes `tiny_recipe` as a TOML file for CLI tests."""
    rows = {"epochs": 1, "global_batch": 8, "seed": 0, "log_every": 1, "checkpoint_every": 2, **train}
    path.write_text(
        "\n".join(
            [
                'name = "tiny_rotnet"',
                "[method]", 'name = "rotnet"', "head_hidden_units = [16]", "image_size = 16",
                "[backbone]", 'arch = "resnet"', "depth = 18", "width = 0.125", 'stem = "cifar"', "image_size = 16",
                "[data]", 'source = "folder:images"', "image_size = 16", "shuffle_buffer = 64",
                'eval_split = "train"',
                "[train]", *(f"{k} = {v}" for k, v in rows.items()),
                "[optimizer]", 'name = "sgd"', "learning_rate = 0.1", "warmup_epochs = 0.0",
            ]
        )
        + "\n"
    )


def write_image_folder(root, n: int = 32, size: int = 20, seed: int = 0) -> None:
    """A folder of real PNG files with smooth content (so rotations are learnable)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([a * yy, b * xx, c * yy * xx], -1) * 255
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"{i:03d}.png")


def two_replica_strategy(devices):
    """Two-replica MirroredStrategy that reduces through one device instead of collective ops.
    Every MirroredStrategy made in a process numbers its collective instances from the same start,
    so a later one (another test file's) can hit a cached collective of a different shape ("Shape
    mismatch in the collective instance"); reducing without collectives keeps the tests
    independent. The maths checked (synchronised batch norm, global-mean loss) is the same."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def assert_two_step_fit(method, images, image_size: int, labels=None) -> None:
    """The method's pretext model trains for two steps under plain Keras `fit` on its own
    transform's output (batches of 4 from `images`), with a finite loss."""
    import keras

    from ssl_zoo.data.pipeline import build_pretext_dataset, keras_pairs
    from ssl_zoo.data.sources import ArraySource

    model = method.build_model()
    ds = keras_pairs(build_pretext_dataset(ArraySource(images, labels), "train", method, batch_size=4, image_size=image_size,
                                           training=True))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds.take(2), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def assert_round_trips_in_safe_mode(model, x, backbone_x, tmp_path):
    """The pretext model saved as .keras reloads in safe mode with the same outputs on `x`, and the
    backbone extracted from it saves and reloads with the same features on `backbone_x`. Returns
    the reloaded backbone for method-specific checks."""
    import keras

    from ssl_zoo.methods.base import extract_backbone

    model.save(tmp_path / "pretext_model.keras")
    loaded = keras.saving.load_model(tmp_path / "pretext_model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    backbone = extract_backbone(loaded)
    backbone.save(tmp_path / "backbone.keras")
    again = keras.saving.load_model(tmp_path / "backbone.keras", safe_mode=True)
    np.testing.assert_allclose(again(backbone_x), extract_backbone(model)(backbone_x), rtol=1e-5, atol=1e-5)
    return backbone


def diagnose_untrained_run(root, recipe: dict):
    """`ssl-zoo diagnose` end to end on an untrained run: a folder of 12 images of 20 px under
    `root`, a run folder with `recipe`'s pretext model (prepared on those images, so data-fitted
    parts such as a colour gamut exist) and recorded recipe, diagnosed on 8 images with a picture.
    `recipe` needs no data table: the folder, 16 px, eval split "train". Returns (the written
    diagnostics, the picture's path, the prepared method)."""
    import json

    from ssl_zoo.cli import main
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.methods import method_from_recipe

    write_image_folder(root, n=12, size=20)
    recipe = recipe_from_dict({**recipe, "data": {"source": "folder:images", "image_size": 16, "eval_split": "train"}})
    method = method_from_recipe(recipe)
    method.prepare(open_source("folder:images", root), "train", 16)
    run = root / "run"
    run.mkdir()
    method.build_model().save(run / "pretext_model.keras")
    (run / "run.json").write_text(json.dumps({"recipe": recipe.to_dict()}))
    out, picture = root / "diagnostics.json", root / "cards" / "x_pretext.png"
    assert main(["diagnose", str(run), "--data-dir", str(root), "--max-examples", "8", "--out", str(out),
                 "--picture", str(picture)]) == 0
    return json.loads(out.read_text()), picture, method
