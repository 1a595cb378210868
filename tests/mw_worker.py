"""One worker of the two-process MultiWorkerMirroredStrategy test (run by test_distribute.py).

Usage: python mw_worker.py DATA_ROOT OUT_DIR  (TF_CONFIG in the environment)
Trains the tiny RotNet recipe for a few steps and dumps this worker's final weights.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import ssl_zoo  # noqa: E402,F401
from ssl_zoo.train.strategy import build_strategy  # noqa: E402

strategy = build_strategy("multiworker")  # must exist before any other TF op

import json  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from helpers import tiny_recipe  # noqa: E402
from ssl_zoo.data.sources import ImageFolderSource  # noqa: E402
from ssl_zoo.methods import build_method  # noqa: E402
from ssl_zoo.train.loop import Trainer  # noqa: E402

data_root, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
task = json.loads(os.environ["TF_CONFIG"])["task"]
recipe = tiny_recipe(epochs=1, steps_per_epoch=4)
method = build_method("rotnet", backbone=recipe.backbone, head_hidden_units=(16,), image_size=16)
trainer = Trainer(method, recipe, ImageFolderSource(data_root / "images"), strategy, out_dir)
result = trainer.fit()
np.savez(out_dir.parent / f"weights_{task['type']}_{task['index']}.npz", *trainer.model.get_weights())
print("WORKER DONE", task, result["history"][-1]["train_loss"], flush=True)
