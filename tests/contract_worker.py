"""Trains one run for the method contract's SIGKILL test (tests/method_contract.py).

Usage: python contract_worker.py RECIPE_JSON IMAGES_NPY OUT_DIR [PLUGIN_MODULE]

Trains the recipe on the images (an ArraySource), resuming OUT_DIR if it holds checkpoints, and
writes every checkpointed variable to OUT_DIR/arrays.npz. With $SSL_ZOO_TEST_KILL_AFTER_CHECKPOINT=k
the process SIGKILLs itself right after checkpoint k is written: a real crash at a chosen moment;
with $SSL_ZOO_TEST_KILL_BEFORE_CHECKPOINT=k, right before it is written.
"""

import importlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402

import ssl_zoo  # noqa: E402,F401
import tensorflow as tf  # noqa: E402

from ssl_zoo.data.sources import ArraySource  # noqa: E402
from ssl_zoo.methods import method_from_recipe  # noqa: E402
from ssl_zoo.train.loop import Trainer  # noqa: E402
from ssl_zoo.train.recipe import recipe_from_dict  # noqa: E402

recipe_path, images_path, out_dir = sys.argv[1:4]
if len(sys.argv) > 4 and sys.argv[4]:
    importlib.import_module(sys.argv[4])
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
tf.config.experimental.enable_op_determinism()
recipe = recipe_from_dict(json.loads(Path(recipe_path).read_text()))
trainer = Trainer(method_from_recipe(recipe), recipe, ArraySource(np.load(images_path)), tf.distribute.get_strategy(),
                  out_dir)
kill_after = os.environ.get("SSL_ZOO_TEST_KILL_AFTER_CHECKPOINT")
kill_before = os.environ.get("SSL_ZOO_TEST_KILL_BEFORE_CHECKPOINT")
if kill_after or kill_before:
    save = trainer.manager.save

    def save_then_crash(*args, **kwargs):
        if kill_before and int(trainer.step.numpy()) == int(kill_before):
            # At an epoch's end: its record is in history.json, its checkpoint not written yet.
            os.kill(os.getpid(), signal.SIGKILL)
        path = save(*args, **kwargs)
        if kill_after and int(trainer.step.numpy()) == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    trainer.manager.save = save_then_crash
trainer.fit()
np.savez(Path(out_dir) / "arrays.npz", **{k: np.asarray(v.numpy()) for k, v in trainer.checkpoint_variables().items()})
print("WORKER DONE", flush=True)
