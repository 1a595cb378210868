"""Model cards, generated from what a run recorded — never written by hand.

Inputs are the preset's metadata (which carries run.json's recipe, history.json and the
`ssl-zoo evaluate` report); the card states only numbers found there. The YAML header is
Hugging Face model-card metadata (`library_name: keras`, tags, datasets, license, `model-index`
with the measured results), built with huggingface_hub's own `ModelCardData` so the Hub parses it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

LICENSE = "apache-2.0"


def stages_in_network_order(stages) -> list[str]:
    """stem, stage1 ... stageN, pooled: the order of the per-stage curve. Reports are written with
    sorted keys (pooled, stage1, ..., stem), which would put the curve's ends in the middle."""
    def depth(stage: str) -> tuple[int, str]:
        if stage == "stem":
            return 0, stage
        if stage.startswith("stage") and stage[5:].isdigit():
            return int(stage[5:]), stage
        return (1000 if stage == "pooled" else 999), stage

    return sorted(stages, key=depth)


# One paragraph per method: the paper, and what the pretext task is.
METHODS = {
    "rotnet": {
        "title": "RotNet",
        "paper": "Gidaris, Singh & Komodakis, \"Unsupervised Representation Learning by Predicting Image "
                 "Rotations\", ICLR 2018 (arXiv:1803.07728)",
        "paragraph": "Every training image is shown at 0, 90, 180 and 270 degrees and the network is trained "
                     "to classify which rotation it sees. No human label is used: to recognise the rotation "
                     "\"the ConvNet model must learn to localize salient objects in the image, recognize their "
                     "orientation and object type\" (Sec. 1). The rotation head is dropped after training; "
                     "the backbone's features are what this entry releases.",
        "pretext_classes": 4,
        "limitation": "RotNet's features depend on images having a canonical orientation; rotation-invariant "
                      "data (aerial, microscopy) gives the pretext task no signal.",
    },
    "jigsaw": {
        "title": "Jigsaw puzzles",
        "paper": "Noroozi & Favaro, \"Unsupervised Learning of Visual Representations by Solving Jigsaw "
                 "Puzzles\", ECCV 2016 (arXiv:1603.09246)",
        "paragraph": "A crop of each image is cut into a 3x3 grid; one tile is taken inside every cell at a "
                     "random offset (so tiles never share an edge and their borders cannot simply be matched), "
                     "normalised on its own and sometimes turned grey (so colour cannot tell neighbours apart). "
                     "The tiles are shuffled by one permutation of a fixed set chosen for maximal minimum "
                     "Hamming distance, and the network classifies which permutation it sees. Every tile goes "
                     "through the same backbone (shared weights); the tile features are concatenated in input "
                     "order and an MLP classifies the permutation. The backbone alone is released; the "
                     "permutation set is part of the method configuration below.",
        "pretext_classes": "num_permutations",  # the configuration field that holds it
        "limitation": "The backbone was trained on small tiles, not whole images: it has seen objects only in "
                      "parts, at the tile scale.",
    },
    "relative_patch": {
        "title": "Relative patch location",
        "paper": "Doersch, Gupta & Efros, \"Unsupervised Visual Representation Learning by Context "
                 "Prediction\", ICCV 2015 (arXiv:1505.05192)",
        "paragraph": "A centre patch and one of its eight neighbours are cut from an image with a gap and a "
                     "random jitter between them (so low-level cues such as continuing lines do not give the "
                     "answer away), and the network predicts which of the eight positions the second patch came "
                     "from. Against chromatic aberration, a lens cue that reveals where a patch sits in the "
                     "frame, two colour channels are dropped and replaced with noise (or the patches are "
                     "projected towards grey, a parameter). Both patches go through the same backbone; their "
                     "features are concatenated and an MLP classifies the position. The backbone alone is "
                     "released.",
        "pretext_classes": 8,
        # Depends on the run's chromatic-aberration defence (channel drop was the only one at first).
        "limitation": lambda method: "The backbone was trained on small patches, not whole images" + {
            "channel_drop": ", and mostly on single colour channels (the chromatic-aberration defence).",
            "grey": ", with the green-magenta colour axis projected out (the chromatic-aberration defence).",
        }.get(method.get("chroma_defence", "channel_drop"), "."),
    },
    "exemplar": {
        "title": "Exemplar CNN",
        "paper": "Dosovitskiy, Fischer, Springenberg, Riedmiller & Brox, \"Discriminative Unsupervised Feature "
                 "Learning with Exemplar Convolutional Neural Networks\", TPAMI 2016 (arXiv:1406.6909)",
        "paragraph": "Seed patches are sampled where the image gradient is strong; each seed becomes its own "
                     "surrogate class, seen under random translation, scaling, rotation, contrast and colour "
                     "changes, and the network classifies which seed a transformed view came from. To tell "
                     "thousands of seeds apart under these changes the features must be invariant to them and "
                     "still discriminative. The classifier over the surrogate classes is dropped after training; "
                     "the backbone is released.",
        # Its classes *are* training seeds, so its held-out measure is new transformations, not new images.
        "pretext_eval": "fresh random transformations of the seed patches (drawn by the evaluation pipeline's "
                        "fixed seeds, as many as the {split} split of {data} has images)",
        "pretext_classes": "num_classes",
        "limitation": "The surrogate classes are a fixed sample of seed patches from the training images; "
                      "features are invariant only to the transformations the recipe applied.",
    },
}

# Which field of a method's configuration names the side of the views its backbone was trained on.
VIEW_SIZE_FIELDS = ("tile_size", "patch_size", "image_size")


def pretext_classes(method: dict) -> int | None:
    """How many classes the pretext task chooses between (for its chance level): fixed by the
    method, or read from the configuration field METHODS names."""
    classes = (METHODS.get(method.get("name")) or {}).get("pretext_classes")
    return method.get(classes) if isinstance(classes, str) else classes

DATASETS = {
    "cifar10": ("cifar10", "CIFAR-10"),
    "cifar100": ("cifar100", "CIFAR-100"),
    "imagenette": ("frgfm/imagenette", "Imagenette"),
}


def _dataset(spec: str | None) -> tuple[str, str]:
    name = (spec or "unknown").split(":", 1)[-1].split("/")[-1]
    for key, value in DATASETS.items():
        if name.startswith(key):
            return value
    return name, name


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _probe_epochs(protocol: dict) -> int | None:
    m = re.search(r"(\d+) epochs", protocol.get("linear_probe", ""))
    return int(m.group(1)) if m else None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def recipe_toml(recipe: dict) -> str:
    """The recipe as the TOML file `ssl-zoo train` reads (None values are left out: defaults)."""
    lines = [f"name = {_toml_value(recipe.get('name', ''))}"]
    for section, values in recipe.items():
        if not isinstance(values, dict):
            continue
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines)


def _card_datasets(meta: dict[str, Any]) -> list[str]:
    """Hub dataset ids: the data it was trained on, then the data it was evaluated on."""
    report = meta.get("evaluation") or {}
    specs = [(meta.get("data") or {}).get("source"), report.get("dataset")]
    ids = [_dataset(spec)[0] for spec in specs if spec]
    return [d for i, d in enumerate(ids) if d != "unknown" and d not in ids[:i]]


def card_data(meta: dict[str, Any]):
    """huggingface_hub.ModelCardData with the measured results as model-index."""
    from huggingface_hub import EvalResult, ModelCardData

    report = meta.get("evaluation") or {}
    method = meta["method"].get("name", "unknown")
    ds_type, ds_name = _dataset(report.get("dataset") or (meta.get("data") or {}).get("source"))
    results = []
    if report:
        split = (report.get("protocol") or {}).get("test_split", "test")
        s = report["summary"]
        common = dict(task_type="image-classification", dataset_type=ds_type, dataset_name=ds_name,
                      dataset_split=split, metric_type="accuracy")
        results.append(EvalResult(task_name="Linear probe on frozen features", metric_name=f"linear probe top-1 ({s['best_stage']})",
                                  metric_value=s["best_stage_probe"], **common))
        results.append(EvalResult(task_name="Linear probe on frozen features", metric_name=f"random-init floor, best stage ({s['random_init_best_stage']})",
                                  metric_value=s["random_init_best_probe"], **common))
        results.append(EvalResult(task_name="kNN on frozen features", metric_name=f"kNN top-1 (k={report['knn']['k']}, {report['knn']['stage']})",
                                  metric_value=report["knn"]["trained"], **common))
    tags = ["self-supervised-learning", "image-feature-extraction", "keras", "tensorflow", method,
            meta["arch"].get("arch", "backbone") if meta.get("arch") else "backbone", "ssl_zoo"]
    return ModelCardData(
        library_name="keras",
        license=LICENSE,
        tags=tags,
        datasets=_card_datasets(meta) or None,
        pipeline_tag="image-feature-extraction",
        model_name=meta["name"],
        eval_results=results or None,
    )


def render_card(meta: dict[str, Any], plot_name: str | None = None) -> str:
    name = meta["name"]
    report = meta.get("evaluation") or {}
    training = meta.get("training") or {}
    recipe = meta.get("recipe") or {}
    method_name = meta["method"].get("name", "unknown")
    info = METHODS.get(method_name)
    inp = meta["input"]
    proto = report.get("protocol") or {}
    # A fully convolutional backbone (no fixed input size) is shown at the size it was evaluated at.
    fixed_size = inp["image_size"]
    size = fixed_size or proto.get("image_size") or 32
    view_size = next((meta["method"][k] for k in VIEW_SIZE_FIELDS if meta["method"].get(k)), None)
    data_size = (recipe.get("data") or {}).get("image_size")
    ds_type, ds_name = _dataset(report.get("dataset") or (meta.get("data") or {}).get("source"))
    train_ds = _dataset((meta.get("data") or {}).get("source"))[1]
    L: list[str] = []
    add = L.append
    add(f"# {name}\n")
    add(f"{meta['backbone_label']} ({meta['parameters']:,} parameters) trained with "
        f"{info['title'] if info else method_name} on {train_ds} without labels, released by "
        f"ssl_zoo as a Keras backbone that maps RGB images in [0, 255] to features "
        f"and, on request, to its named stages ({', '.join(meta['stages'])}).\n")

    add("## Results\n")
    if report:
        s = report["summary"]
        add(f"Measured by `ssl-zoo evaluate` on {ds_name} ({proto.get('num_train', '?')} training / "
            f"{proto.get('num_test', '?')} test images, {proto.get('image_size', size)} px). Every number is next to the "
            f"same architecture at random initialisation (the floor a frozen random network already reaches).\n")
        add("| stage | probe dims | trained | random init | gain |")
        add("|---|---:|---:|---:|---:|")
        for stage in stages_in_network_order(report["linear_probe"]):
            r = report["linear_probe"][stage]
            add(f"| {stage} | {r['dims']} | {_pct(r['trained'])} | {_pct(r['random_init'])} | "
                f"{100 * (r['trained'] - r['random_init']):+.2f} pt |")
        add("")
        add(f"- Best stage: **{s['best_stage']}**, linear probe **{_pct(s['best_stage_probe'])}**; random init at "
            f"the same stage {_pct(s['random_init_probe_same_stage'])}, best random-init stage "
            f"({s['random_init_best_stage']}) {_pct(s['random_init_best_probe'])}; gain over the best floor "
            f"{100 * s['gain_over_best_random_init']:+.2f} pt.")
        k = report["knn"]
        add(f"- kNN (k={k['k']}, {k['stage']} features): {_pct(k['trained'])} (random init {_pct(k['random_init'])}).")
    else:
        add("No evaluation report was given at export time: this entry has no measured downstream numbers.")
    if training.get("pretext_eval_accuracy") is not None:
        classes = pretext_classes(meta["method"])
        chance = f"; chance {_pct(1 / classes)}" if classes else ""
        split = (recipe.get("data") or {}).get("eval_split", "test")
        held_out = (info or {}).get("pretext_eval", "the held-out {split} split of {data}").format(split=split, data=train_ds)
        add(f"- Pretext task ({info['title'] if info else method_name}) accuracy on {held_out} after epoch "
            f"{training['pretext_eval_epoch']}: {_pct(training['pretext_eval_accuracy'])} "
            f"(loss {training['pretext_eval_loss']:.4f}{chance}).")
    cc = meta.get("context_check")
    if cc:
        acc = cc["accuracy"]
        share = cc.get("context_share")
        add(f"- Does it use its context? `ssl-zoo context-check` on {cc['examples']} held-out images "
            f"(`{cc.get('split')}` of {cc.get('data')}): {_pct(acc['as_drawn'])} as drawn, "
            f"{_pct(acc['centre_from_other_image'])} with the centre patch of another image, "
            f"{_pct(acc['centre_blanked'])} with the centre blanked (chance {_pct(cc['chance'])})"
            + (f"; {100 * share:.0f} % of its above-chance accuracy needs the centre patch (the rest survives "
               f"without it: cues such as where the neighbour lies in the photo)." if share is not None else "."))
    add("")
    if plot_name and report:
        add(f"![Linear probe accuracy per stage, trained vs random init]({plot_name})\n")

    add("## Method\n")
    if info:
        add(f"{info['paragraph']}\n\nPaper: {info['paper']}.\n")
    else:
        add(f"Method `{method_name}` (no description registered in ssl_zoo.cards.METHODS).\n")
    add("Method configuration as trained:\n")
    add("```json\n" + json.dumps(meta["method"], sort_keys=True) + "\n```\n")

    add("## How to use\n")
    if fixed_size:
        add(f"Inputs: RGB images, {size}x{size}, values in [0, 255] (uint8 or float). The model normalises "
            f"them itself (mean {inp['mean']}, std {inp['std']} on [0, 1] pixels), so no preprocessing is needed.\n")
    else:
        add(f"Inputs: RGB images of any size (the network is fully convolutional and pools globally; it was "
            f"trained on {view_size} px views and evaluated at {size} px), values in [0, 255] (uint8 or float). "
            f"The model normalises them itself (mean {inp['mean']}, std {inp['std']} on [0, 1] pixels), so no "
            f"preprocessing is needed. The example below builds the classifier at {size} px.\n")
    num_classes = 10
    add("```python\nimport keras\nimport ssl_zoo\n\n"
        f"backbone = ssl_zoo.load_backbone(\"{name}\")  # or a preset folder, a SavedModel, a .keras file, hf://org/name\n"
        f"stages = ssl_zoo.load_backbone(\"{name}\", stages=[\"stage3\", \"pooled\"])  # dict of stage outputs\n\n"
        f"# train_ds: batches of (RGB images {size}x{size} in [0, 255], integer labels), e.g. a tf.data.Dataset\n"
        f"inputs = keras.Input(({size}, {size}, 3))\n"
        f"classifier = keras.Model(inputs, keras.layers.Dense({num_classes})(backbone(inputs)))\n"
        "loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)\n"
        "backbone.trainable = False  # 1: linear head on frozen features (batch norm in inference mode)\n"
        "classifier.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=[\"accuracy\"])\n"
        "classifier.fit(train_ds, epochs=2)\n"
        "backbone.trainable = True  # 2: everything, at a lower learning rate\n"
        "classifier.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=[\"accuracy\"])\n"
        "classifier.fit(train_ds, epochs=2)\n```\n")
    add(f"Or from the command line: `ssl-zoo finetune {name} --dataset tfds:cifar10 --data-dir DATA "
        f"--max-train-examples 5000{'' if fixed_size else f' --image-size {size}'}` (frozen, then unfrozen, next "
        f"to the random-init floor).\n")
    add("Without ssl_zoo: the preset is `config.json` + `model.weights.h5` "
        "(`keras.saving.deserialize_keras_object(config)`, then `load_weights`), and the SavedModel export loads "
        "with `tf.saved_model.load(path).signatures[\"serving_default\"](images=float_images)`, which returns "
        "`pooled` and every stage.\n")

    add("## Training recipe and how to reproduce\n")
    if recipe:
        rname = recipe.get("name", name)
        if recipe.get("description"):
            # The recipe's own comment block: expected results, runtime and how the weights were made.
            add("From the recipe's header:\n")
            add("\n".join(f"> {line}" if line else ">" for line in recipe["description"].splitlines()) + "\n")
        add(f"Recipe `training/{rname}.toml` with every value as run (from the run's run.json):\n")
        add("```toml\n" + recipe_toml(recipe) + "\n```\n")
        ev_flags = ""
        if report:
            stages = ",".join(stages_in_network_order(report["linear_probe"]))
            pe = _probe_epochs(proto)
            ev_flags = (f" --dataset {report.get('dataset')} --stages {stages} --image-size {proto.get('image_size', size)}"
                        f" --knn-k {report['knn']['k']}" + (f" --probe-epochs {pe}" if pe else "")
                        + f" --max-train-examples {proto.get('num_train')} --seed {proto.get('seed', 0)}")
        add("```bash\n"
            f"ssl-zoo train training/{rname}.toml --data-dir DATA --out runs/{name}\n"
            f"ssl-zoo evaluate runs/{name}/backbone.keras --data-dir DATA{ev_flags} --out runs/{name}/eval.json\n"
            f"ssl-zoo export runs/{name} --name {name} --out export/{name} --eval runs/{name}/eval.json --register\n"
            "```\n")
        add("`DATA` is the data root holding `tensorflow_datasets/` (or set `$SSL_ZOO_DATA_DIR`).\n")
    else:
        add("The run that produced these weights recorded no recipe (no run.json was found at export time).\n")

    add("## Training time and hardware\n")
    if training:
        add(f"- {training['epochs']} epochs, {training['steps']} optimizer steps, global batch "
            f"{(recipe.get('train') or {}).get('global_batch', '?')} images, "
            f"{(meta.get('run') or {}).get('replicas', '?')} replica(s).")
        add(f"- Training wall-clock (sum of the per-epoch times in history.json, evaluation excluded): "
            f"{training['train_seconds']:.0f} s ({training['train_seconds'] / 3600:.2f} h); "
            f"mean throughput {training['images_per_second_mean']:.0f} source images/s.")
        add(f"- Final training loss {training['final_train_loss']}, pretext training accuracy "
            f"{_pct(training['final_train_accuracy'])}.")
    else:
        add("- No training history was available at export time.")
    if meta.get("hardware"):
        add(f"- Hardware: {_hardware_text(meta['hardware'])} (source: {meta.get('hardware_source')}).")
    else:
        add("- Hardware: not recorded by the training run.")
    if report.get("seconds") is not None:
        add(f"- Evaluation (`ssl-zoo evaluate`, trained + random init) took {report['seconds']:.0f} s.")
    add("")

    if report:
        add("## Evaluation protocol\n")
        add(f"- Linear probe: {proto.get('linear_probe')}")
        add(f"- kNN: {proto.get('knn')}")
        add(f"- Splits: train `{proto.get('train_split')}`, test `{proto.get('test_split')}`; seed {proto.get('seed')}.\n")

    add("## Limitations\n")
    if fixed_size:
        add(f"- Trained on {train_ds} only, at {size}x{size} px: features are tuned to that resolution and image "
            f"distribution; other sizes run but were not evaluated.")
    else:
        add(f"- Trained on {train_ds} only, on {view_size} px views cut from {data_size} px images, and evaluated "
            f"on {ds_name} at {size} px: other sizes run but were not evaluated.")
    add("- A small backbone trained on a short schedule: compare its numbers with the random-init floor above "
        "and with zoo entries evaluated by the same protocol, not with results from other papers' setups.")
    if info and info.get("limitation"):
        limitation = info["limitation"]
        add(f"- {limitation(meta['method']) if callable(limitation) else limitation}")
    add("- Evaluated with linear probes and kNN on one dataset; transfer to other tasks was not measured.\n")

    add("## Files\n")
    add(f"- `model.weights.h5` sha256 `{meta['weights']['sha256']}` (checked by `ssl_zoo.load_backbone`).")
    add(f"- Written by ssl_zoo {meta['ssl_zoo_version']}, Keras {meta['keras_version']}, "
        f"TensorFlow {meta['tensorflow_version']}.\n")
    body = "\n".join(L)
    return f"---\n{card_data(meta).to_yaml()}\n---\n\n{body}"


def plot_probe(report: dict, path: str | os.PathLike, title: str = "") -> Path | None:
    """Per-stage linear-probe accuracy, trained vs random init, as a PNG."""
    if not report:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = stages_in_network_order(report["linear_probe"])
    trained = [100 * report["linear_probe"][s]["trained"] for s in stages]
    floor = [100 * report["linear_probe"][s]["random_init"] for s in stages]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(stages, trained, "o-", label="trained")
    ax.plot(stages, floor, "s--", label="random init")
    ax.set_ylabel("linear probe top-1 (%)")
    ax.set_xlabel("stage")
    ax.set_title(title or "linear probe per stage")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_card_files(meta: dict, folder: str | os.PathLike, card_name: str = "README.md",
                     plot_name: str = "probe_per_stage.png") -> Path:
    """Writes the card (and its plot beside it) into `folder`; returns the card's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plot = plot_probe(meta.get("evaluation"), folder / plot_name, meta["name"])
    card = folder / card_name
    card.write_text(render_card(meta, plot.name if plot else None))
    return card


def write_model_card(preset: str | os.PathLike, cards_dir: str | os.PathLike = "model_cards") -> Path:
    """`model_cards/ENTRY.md` (+ `ENTRY_probe.png`) from a preset folder's metadata."""
    from ssl_zoo.export import atomic_file

    meta = json.loads((Path(preset) / "metadata.json").read_text())
    cards_dir = Path(cards_dir)
    cards_dir.mkdir(parents=True, exist_ok=True)
    name = meta["name"]
    plot = None
    if meta.get("evaluation"):
        with atomic_file(cards_dir / f"{name}_probe.png") as tmp:
            plot_probe(meta["evaluation"], tmp, name)
        plot = f"{name}_probe.png"
    with atomic_file(cards_dir / f"{name}.md") as tmp:
        tmp.write_text(render_card(meta, plot))
    return cards_dir / f"{name}.md"


def _hardware_text(hw) -> str:
    """run.json records hardware as a dict (see train.loop.describe_hardware); --hardware as text."""
    if not isinstance(hw, dict):
        return str(hw)
    accel = ", ".join(f"{n} {t}" for t, n in (hw.get("accelerators") or {}).items()) or "no accelerator"
    return (f"{hw.get('cpu')} ({hw.get('cpu_count')} cores), {accel}; {hw.get('strategy')} with "
            f"{hw.get('replicas')} replica(s); TensorFlow {hw.get('tensorflow')}, Keras {hw.get('keras')}")
