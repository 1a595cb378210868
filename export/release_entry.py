"""Export, register and verify one zoo entry (see export/README.md).

    python export/release_entry.py runs/NAME --name NAME --eval runs/NAME/eval.json \
        [--out export/NAME] [--hardware "..."] [--hf hf://org/NAME] [--no-register] [--recipe FILE] \
        [--diagnostics runs/NAME/diagnostics.json] [--data-dir DATA]

Runs `ssl-zoo export --register --recipe training/NAME.toml` (the recipe file must hold exactly the
values the run used, so that the repository reproduces the released weights; its header, with the
measured numbers, goes into the card), then reloads every artefact and compares its features with the
trained backbone on random images: the preset through `ssl_zoo.load_backbone(NAME)` (sha256
checked), the `.keras` file with plain Keras, and the SavedModel with plain `tf.saved_model.load`
in a subprocess that never imports ssl_zoo. A registered entry also regenerates the leaderboard
(`ssl-zoo leaderboard`: model_cards/LEADERBOARD.md, its plot, README's table). Exits non-zero if any
difference exceeds --tol.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_PLAIN_TF = """
import sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
out = loaded.signatures["serving_default"](images=tf.constant(x, tf.float32))
np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
assert not any(m.split(".")[0] == "ssl_zoo" for m in sys.modules)
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="training run folder (ssl-zoo train --out)")
    p.add_argument("--name", required=True)
    p.add_argument("--eval", required=True, help="ssl-zoo evaluate --out report")
    p.add_argument("--out", default=None, help="default export/NAME")
    p.add_argument("--hardware", default=None)
    p.add_argument("--hf", default=None)
    p.add_argument("--no-register", action="store_true")
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--diagnostics", "--context-check", default=None,
                   help="ssl-zoo diagnose report of the run, recorded in the metadata and shown in the card "
                        "(--context-check: its former name)")
    p.add_argument("--data-dir", default=None,
                   help="data root: also draw the entry's pictures beside its card (`ssl-zoo pictures`)")
    p.add_argument("--recipe", default=None,
                   help="recipe file that reproduces the run (default training/NAME.toml when it exists); "
                        "checked value by value against the run's, its header goes into the card")
    args = p.parse_args(argv)

    import numpy as np

    import ssl_zoo  # noqa: F401  (sets TF options before TensorFlow loads)
    from ssl_zoo.backbones import STAGES, stage_model
    from ssl_zoo.cli import main as cli

    out = Path(args.out or Path("export") / args.name)
    cmd = ["export", args.run, "--name", args.name, "--out", str(out), "--eval", args.eval]
    if not args.no_register:
        cmd.append("--register")
    if args.hardware:
        cmd += ["--hardware", args.hardware]
    if args.hf:
        cmd += ["--hf", args.hf]
    recipe = args.recipe or (f"training/{args.name}.toml" if Path(f"training/{args.name}.toml").exists() else None)
    if recipe:
        cmd += ["--recipe", recipe]
    if args.diagnostics:
        # Through export's --context-check, which also takes a report written before `ssl-zoo diagnose`.
        cmd += ["--context-check", args.diagnostics]
    if cli(cmd) != 0:
        return 1
    if not args.no_register:  # the new entry's row in model_cards/LEADERBOARD.md and the README
        if cli(["leaderboard"] + ([] if Path("README.md").is_file() else ["--no-readme"])) != 0:
            return 1
        if args.data_dir and cli(["pictures", args.name, "--data-dir", args.data_dir]) != 0:
            return 1
        # Every card in model_cards/ again: a new supervised reference adds its column to the others.
        if cli(["card", "--all"]) != 0:
            return 1

    import keras

    from ssl_zoo.loader import load_backbone, load_raw_backbone

    trained = load_raw_backbone(args.run)
    # An any-size backbone is checked at the size it was evaluated at.
    size = trained.input.shape[1] or json.loads(Path(args.eval).read_text())["protocol"]["image_size"]
    x = np.random.default_rng(0).integers(0, 256, (8, size, size, 3)).astype("float32")
    ref = {k: np.asarray(v) for k, v in stage_model(trained, STAGES)(x, training=False).items()}
    diffs = {}
    preset_model = load_backbone(args.name if not args.no_register else out / "preset", stages=list(STAGES))
    diffs["preset"] = max(float(np.abs(np.asarray(preset_model(x)[s]) - ref[s]).max()) for s in STAGES)
    keras_model = keras.saving.load_model(out / f"{args.name}.keras", compile=False)
    diffs["keras"] = float(np.abs(np.asarray(keras_model(x)) - ref["pooled"]).max())
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([sys.executable, "-c", _PLAIN_TF, str((out / "saved_model").resolve()), str(Path(tmp) / "x.npy"),
                        str(Path(tmp) / "y.npz")], check=True, env=env, cwd=tmp)
        got = np.load(Path(tmp) / "y.npz")
        diffs["saved_model"] = max(float(np.abs(got[s] - ref[s]).max()) for s in STAGES)
    print(json.dumps({"max_abs_diff": diffs, "tolerance": args.tol}, indent=2))
    return 0 if max(diffs.values()) <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
