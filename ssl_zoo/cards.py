"""Model cards, generated from what a run recorded — never written by hand.

Inputs are the preset's metadata (which carries run.json's recipe, history.json and the
`ssl-zoo evaluate` report); the card states only numbers found there. The YAML header is
Hugging Face model-card metadata (`library_name: keras`, tags, Hub dataset ids, license,
`model-index` with this model's own measured results, rounded; the random-init floor is in the
text only), built with huggingface_hub's own `ModelCardData` so the Hub parses it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ssl_zoo import leaderboard
from ssl_zoo.finetune import final_accuracy
from ssl_zoo.leaderboard import (LABEL_EFFICIENCY_SUFFIX, ZOO_PROTOCOL_SUFFIX, label_efficiency_beside, protocol_parts,
                                 zoo_protocol_beside)
from ssl_zoo.methods.card import pct as _pct
from ssl_zoo.preset import (CARD_FILE, PLOT_FILE, TRAINING_PLOT_FILE, atomic_file, diagnostics, read_metadata,
                            refresh_manifest, round_accuracy)

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


def method_class(name: str | None):
    """The method's class in the registry (`ssl_zoo.methods.METHODS`), None for an unknown one."""
    from ssl_zoo.methods import METHODS

    return METHODS.get(name)


def method_card(name: str | None):
    """The method's `MethodCard` (its title, paper, paragraph, ...), None when it has none."""
    return getattr(method_class(name), "card", None)


def pretext_classes(method: dict) -> int | None:
    """How many classes the pretext task chooses between (for its chance level), from the
    method's card: fixed by the method, or read from the configuration field it names."""
    card = method_card(method.get("name"))
    return card.classes(method) if card else None


def diagnostic_lines(meta: dict[str, Any]) -> list[str]:
    """The card's lines for the method's recorded diagnostics (`ssl-zoo diagnose`), rendered by the
    method itself (`card_diagnostics`); none for a method that renders none."""
    found = diagnostics(meta)
    render = getattr(method_class(meta["method"].get("name")), "card_diagnostics", None)
    return list(render(found)) if found and render else []


# Hub dataset ids (the repositories the Hub links a card's `datasets` and `model-index` to): CIFAR
# moved from the legacy un-namespaced "cifar10" to "uoft-cs/cifar10" (the old id only redirects).
# Longest key first: "cifar100" must not be read as "cifar10".
DATASETS = {
    "cifar100": ("uoft-cs/cifar100", "CIFAR-100"),
    "cifar10": ("uoft-cs/cifar10", "CIFAR-10"),
    "imagenette": ("frgfm/imagenette", "Imagenette"),
}


def _dataset(spec: str | None) -> tuple[str, str]:
    """(Hub dataset id or "unknown", the name a card writes) of a data source spec."""
    if (spec or "").startswith("single:"):  # one photo: no Hub dataset
        photo = spec.split(":", 1)[1].split("?", 1)[0].split("/")[-1]
        return "unknown", f"one photo ({photo}, served as augmented crops)"
    name = (spec or "unknown").split(":", 1)[-1].split("/")[-1]
    for key, value in DATASETS.items():
        if name.startswith(key):
            return value
    return name, name


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
    """huggingface_hub.ModelCardData with this model's measured results as model-index: its best-stage
    linear probe and its kNN accuracy, rounded (`ssl_zoo.preset.round_accuracy`). The random-init
    floor is another model's result (the same architecture, untrained): the Hub would list it as a
    score of these weights, so it is stated in the card's text only."""
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
                                  metric_value=round_accuracy(s["best_stage_probe"]), **common))
        results.append(EvalResult(task_name="kNN on frozen features", metric_name=f"kNN top-1 (k={report['knn']['k']}, {report['knn']['stage']})",
                                  metric_value=round_accuracy(report["knn"]["trained"]), **common))
    tags = ["supervised-reference" if _uses_labels(method) else "self-supervised-learning",
            "image-feature-extraction", "keras", "tensorflow", method,
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


def _uses_labels(method_name: str | None) -> bool:
    """True for a method trained with the data's labels (the supervised reference)."""
    return bool(getattr(method_class(method_name), "reads_labels", False))


def batch_norm_sentence(record: dict | None) -> str | None:
    """The card's sentence on the released batch norm (metadata "batch_norm", written by
    ssl_zoo.preset), None for metadata written before it was recorded."""
    if not record or record.get("config") != "plain":
        return None
    text = ("Batch normalisation in this preset's `config.json` (and in the `.keras` export) is plain "
            "(`synchronized: false`), so it loads on the TensorFlow, JAX and PyTorch Keras backends; "
            "synchronised batch norm, which ssl_zoo's trainer uses across replicas, is a training-time option "
            "that only TensorFlow accepts, and both kinds hold the same four variables per layer")
    if record.get("config_rewritten"):
        text += (" (first released with `synchronized: true`, this entry was re-released with only its "
                 "`config.json` rewritten: the weight file, its sha256 and every number on this card are unchanged)")
    return text + "."


# Keys of a history record that the card already states in words.
_STANDARD_RECORD_KEYS = {"epoch", "step", "seconds", "images_per_second", "train_loss", "train_accuracy", "eval_loss",
                         "eval_accuracy"}


def method_metrics(history: list[dict] | None) -> dict[str, float]:
    """What a method reported beyond loss and accuracy in its last epoch: its loss terms
    (`train_*`), held-out measures (`eval_*`), epoch-hook results (`hook_*`, e.g. clustering NMI)
    and each named optimizer's learning rate."""
    if not history:
        return {}
    last = history[-1]
    return {k: v for k, v in last.items() if k not in _STANDARD_RECORD_KEYS and isinstance(v, (int, float))}


def method_training_lines(meta: dict[str, Any], plot_name: str | None = None) -> list[str]:
    """The method's own section on its training (`card_training`: DeepCluster's NMI per epoch), none
    for a method that renders none."""
    render = getattr(method_class(meta["method"].get("name")), "card_training", None)
    return list(render(meta, plot_name)) if render else []


def plot_method_training(meta: dict[str, Any], path) -> Path | None:
    """The method's own plot of its training (`card_plot`), None when it draws none."""
    draw = getattr(method_class(meta["method"].get("name")), "card_plot", None)
    return draw(meta, path) if draw else None


def label_efficiency_lines(report: dict[str, Any], file_name: str, plot_name: str | None = None) -> list[str]:
    """The card's "Label efficiency" section: fine-tuning accuracy per label fraction next to random
    init (and its plot, `plot_name`, when drawn), and the accuracy left under attack when the report
    measured it."""
    proto = report["protocol"]
    L = ["## Label efficiency\n",
         f"Fine-tuned on a class-balanced fraction of {_dataset(report['dataset'])[1]}'s training labels and tested "
         f"on its {proto['test_split']} split (`ssl-zoo label-efficiency`, protocol `{report['protocol_id']}`, "
         f"[report]({file_name})), next to the same architecture from random initialisation under the same "
         f"schedule: {proto['schedule']}. The random-init twin gets the same steps, half of them with its "
         f"backbone frozen: it is the floor of what those steps buy without pretraining, not a network trained "
         f"from scratch to convergence.\n",
         "| labels | images | pretrained | random init | gain |", "|---|---:|---:|---:|---:|"]
    rows = sorted(report["fractions"].items(), key=lambda kv: float(kv[0]))
    for fraction, row in rows:
        ours, floor = final_accuracy(row["trained"]), final_accuracy(row["random_init"])
        L.append(f"| {100 * float(fraction):g} % | {row['num_labels']:,} | {_pct(ours)} | {_pct(floor)} | "
                 f"{100 * (ours - floor):+.2f} pt |")
    L.append("")
    if plot_name:
        L.append(f"![fine-tuned accuracy against the share of labels]({plot_name})\n")
    reused = sorted({row["random_init"]["reused"]["measured_for"] for _, row in rows if "reused" in row["random_init"]})
    if reused:
        L.append(f"The random-init runs were measured once for {', '.join(f'`{m}`' for m in reused)} and reused here: "
                 "the same architecture, examples, schedule and seed give the same twin (`ssl_zoo.finetune."
                 "RandomInitCache`).\n")
    attacked = [(f, row) for f, row in rows if "robustness" in row["trained"] and "robustness" in row["random_init"]]
    if attacked:
        L.append(f"Accuracy left under attack ({proto['robustness']}):\n")
        L += ["| labels | attack | pretrained | random init |", "|---|---|---:|---:|"]
        for fraction, row in attacked:
            ours, floor = row["trained"]["robustness"]["accuracy"], row["random_init"]["robustness"]["accuracy"]
            for attack in ours:
                L.append(f"| {100 * float(fraction):g} % | {attack} | {_pct(ours[attack])} | {_pct(floor.get(attack))} |")
        L.append("")
    return L


def zoo_protocol_lines(report: dict[str, Any], released: dict[str, Any] | None, file_name: str) -> list[str]:
    """The card's "Other datasets" section: the zoo protocol's evaluation parts that measured
    something the released report does not (another dataset or size), best stage and kNN of each
    next to random init."""
    from ssl_zoo.evaluation.protocol import protocol_id

    skip = protocol_id(released) if released else None
    parts = {name: r for name, r in protocol_parts(report, "evaluate").items() if protocol_id(r) != skip}
    if not parts:
        return []
    L = ["## Other datasets\n",
         f"The zoo's protocol (`ssl-zoo evaluate {report['model']} --protocol zoo`, [report]({file_name})) on "
         "other data, the same probe and kNN as above, next to the same architecture at random initialisation:\n",
         "| part | dataset | px | train / test images | best stage | probe | random init, best stage | gain | kNN | "
         "kNN random init | protocol |", "|---|---|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for name, r in parts.items():
        s, k, proto = r["summary"], r["knn"], r["protocol"]
        L.append(f"| {name} | {_dataset(r['dataset'])[1]} | {proto['image_size']} | {proto['num_train']:,} / "
                 f"{proto['num_test']:,} | {s['best_stage']} | {_pct(s['best_stage_probe'])} | "
                 f"{_pct(s['random_init_best_probe'])} ({s['random_init_best_stage']}) | "
                 f"{100 * s['gain_over_best_random_init']:+.2f} pt | {_pct(k['trained'])} | {_pct(k['random_init'])} | "
                 f"`{protocol_id(r)}` |")
    return L + [""]


def render_card(meta: dict[str, Any], plot_name: str | None = None, training_plot_name: str | None = None,
                pictures: dict[str, str] | None = None, reference: dict[str, Any] | None = None,
                label_efficiency: dict[str, Any] | None = None, zoo_protocol: dict[str, Any] | None = None,
                label_efficiency_plot: str | None = None) -> str:
    """The card's markdown. `pictures`: {kind: file} beside the card (`ssl_zoo.pictures`), linked
    in a section of their own; `reference`: the supervised reference's leaderboard row
    (`ssl_zoo.leaderboard.reference_for`), whose probe each stage is shown as a fraction of;
    `label_efficiency`: the entry's `ssl-zoo label-efficiency` report (`label_efficiency_beside`);
    `zoo_protocol`: its zoo-protocol report (`zoo_protocol_beside`), whose other datasets it lists;
    `label_efficiency_plot`: the file of its plot (`plot_card_label_efficiency`).
    All of these for the cards folder's card, which `ssl-zoo card` regenerates; the preset's card is
    fixed at release and has none of them."""
    name = meta["name"]
    report = meta.get("evaluation") or {}
    training = meta.get("training") or {}
    recipe = meta.get("recipe") or {}
    method_name = meta["method"].get("name", "unknown")
    info = method_card(method_name)
    inp = meta["input"]
    proto = report.get("protocol") or {}
    # A fully convolutional backbone (no fixed input size) is shown at the size it was evaluated at.
    fixed_size = inp["image_size"]
    size = fixed_size or proto.get("image_size") or 32
    view_size = info.view_size(meta["method"]) if info else None
    data_size = (recipe.get("data") or {}).get("image_size")
    ds_type, ds_name = _dataset(report.get("dataset") or (meta.get("data") or {}).get("source"))
    train_ds = _dataset((meta.get("data") or {}).get("source"))[1]
    L: list[str] = []
    add = L.append
    add(f"# {name}\n")
    add(f"{meta['backbone_label']} ({meta['parameters']:,} parameters) trained with "
        f"{info.title if info else method_name} on {train_ds} "
        f"{'WITH its labels (a reference for the self-supervised entries)' if _uses_labels(method_name) else 'without labels'}"
        f", released by "
        f"ssl_zoo as a Keras backbone that maps RGB images in [0, 255] to features "
        f"and, on request, to its named stages ({', '.join(meta['stages'])}).\n")

    add("## Results\n")
    if report:
        s = report["summary"]
        add(f"Measured by `ssl-zoo evaluate` on {ds_name} ({proto.get('num_train', '?')} training / "
            f"{proto.get('num_test', '?')} test images, {proto.get('image_size', size)} px). Every number is next to the "
            f"same architecture at random initialisation (the floor a frozen random network already reaches).\n")
        ref_stages = (reference or {}).get("stages") or {}
        add("| stage | probe dims | trained | random init | gain |" + (" of supervised |" if ref_stages else ""))
        add("|---|---:|---:|---:|---:|" + ("---:|" if ref_stages else ""))
        for stage in stages_in_network_order(report["linear_probe"]):
            r = report["linear_probe"][stage]
            row = (f"| {stage} | {r['dims']} | {_pct(r['trained'])} | {_pct(r['random_init'])} | "
                   f"{100 * (r['trained'] - r['random_init']):+.2f} pt |")
            if ref_stages:
                ref = ref_stages.get(stage)
                row += f" {100 * r['trained'] / ref['trained']:.0f} % |" if ref else " – |"
            add(row)
        add("")
        if ref_stages:
            add(f"*Of supervised*: the probe as a fraction of the supervised reference's at the same stage "
                f"([{reference['name']}]({reference['name']}.md): this backbone trained with the labels, evaluated "
                f"the same way; Asano et al. 2020, Table 1).\n")
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
        held_out = ((info and info.pretext_eval_text(meta["method"])) or "the held-out {split} split of {data}").format(
            split=split, data=train_ds)
        add(f"- Pretext task ({info.title if info else method_name}) accuracy on {held_out} after epoch "
            f"{training['pretext_eval_epoch']}: {_pct(training['pretext_eval_accuracy'])} "
            f"(loss {training['pretext_eval_loss']:.4f}{chance}).")
    L.extend(diagnostic_lines(meta))
    add("")
    if plot_name and report:
        add(f"![Linear probe accuracy per stage, trained vs random init]({plot_name})\n")
    if zoo_protocol:
        L.extend(zoo_protocol_lines(zoo_protocol, report or None, f"{name}{ZOO_PROTOCOL_SUFFIX}"))
    if label_efficiency:
        from_protocol = any(label_efficiency == r for r in protocol_parts(zoo_protocol, "label_efficiency").values())
        L.extend(label_efficiency_lines(label_efficiency,
                                        f"{name}{ZOO_PROTOCOL_SUFFIX if from_protocol else LABEL_EFFICIENCY_SUFFIX}",
                                        label_efficiency_plot))
    if pictures:
        from ssl_zoo.pictures import PICTURES

        add("## Pictures\n")
        add("Drawn on held-out images: the filters and neighbours from the released backbone (`ssl-zoo pictures`); "
            "the pretext task by the method's own transform with its training augmentation, or for a clustering "
            "method by clustering the released backbone's features (`ssl-zoo pictures`), or for a generative "
            "method by the trained model (`ssl-zoo diagnose --picture`).\n")
        for kind, file in pictures.items():
            add(f"![{PICTURES[kind]}]({file})\n")

    add("## Method\n")
    if info:
        add(f"{info.paragraph}\n\nPaper: {info.paper}.\n")
    else:
        add(f"Method `{method_name}` (no card registered: its class in ssl_zoo.methods.METHODS has no `card`).\n")
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
    backends = batch_norm_sentence(meta.get("batch_norm"))
    if backends:
        add(backends + "\n")

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

    L.extend(method_training_lines(meta, training_plot_name))
    add("## Training time and hardware\n")
    if training:
        add(f"- {training['epochs']} epochs, {training['steps']} optimizer steps, global batch "
            f"{(recipe.get('train') or {}).get('global_batch', '?')} images, "
            f"{(meta.get('run') or {}).get('replicas', '?')} replica(s).")
        add(f"- Training wall-clock (sum of the per-epoch times in history.json, evaluation excluded): "
            f"{training['train_seconds']:.0f} s ({training['train_seconds'] / 3600:.2f} h); "
            f"mean throughput {training['images_per_second_mean']:.0f} source images/s.")
        accuracy = training.get("final_train_accuracy")
        add(f"- Final training loss {training['final_train_loss']}"
            + (f", pretext training accuracy {_pct(accuracy)}." if accuracy is not None else "."))
        own = method_metrics(meta.get("history"))
        if own:
            add("- The method's own metrics in the last epoch (history.json): "
                + ", ".join(f"`{k}` {v:.4g}" for k, v in own.items()) + ".")
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
    limitation = info.limitation_text(meta["method"]) if info else None
    if limitation:
        add(f"- {limitation}")
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


def write_card_files(meta: dict, folder: str | os.PathLike, card_name: str = CARD_FILE,
                     plot_name: str = PLOT_FILE) -> Path:
    """Writes the card (and its plot beside it) into `folder`; returns the card's path. In a preset
    folder that has a file manifest (`ssl-zoo card --in-preset`), the manifest in its metadata.json
    is updated to the new files (a zoo entry must then be re-registered: the registry holds the
    sha256 of metadata.json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plot = plot_probe(meta.get("evaluation"), folder / plot_name, meta["name"])
    training_plot = plot_method_training(meta, folder / TRAINING_PLOT_FILE)
    card = folder / card_name
    card.write_text(render_card(meta, plot.name if plot else None, training_plot.name if training_plot else None))
    refresh_manifest(folder)
    return card


def write_model_card(preset: str | os.PathLike, cards_dir: str | os.PathLike = "model_cards") -> Path:
    """`model_cards/ENTRY.md` (+ `ENTRY_probe.png`) from a preset folder's metadata."""
    meta = read_metadata(preset)
    cards_dir = Path(cards_dir)
    cards_dir.mkdir(parents=True, exist_ok=True)
    name = meta["name"]
    plot = None
    if meta.get("evaluation"):
        with atomic_file(cards_dir / f"{name}_probe.png") as tmp:
            plot_probe(meta["evaluation"], tmp, name)
        plot = f"{name}_probe.png"
    training_plot = None
    partial = cards_dir / f".{name}_training.partial.png"
    if plot_method_training(meta, partial):  # a method that draws none leaves no file
        os.replace(partial, cards_dir / f"{name}_training.png")
        training_plot = f"{name}_training.png"
    from ssl_zoo.pictures import pictures_beside

    reference = supervised_reference(name)
    label_efficiency = label_efficiency_beside(cards_dir, name)
    label_efficiency_plot = f"{name}_label_efficiency.png"
    if label_efficiency:
        with atomic_file(cards_dir / label_efficiency_plot) as tmp:
            plot_card_label_efficiency(name, label_efficiency, reference, cards_dir, tmp)
    else:  # a report removed (weights re-released) takes its plot with it
        (cards_dir / label_efficiency_plot).unlink(missing_ok=True)
        label_efficiency_plot = None
    with atomic_file(cards_dir / f"{name}.md") as tmp:
        tmp.write_text(render_card(meta, plot, training_plot, pictures_beside(cards_dir, name), reference,
                                   label_efficiency, zoo_protocol_beside(cards_dir, name), label_efficiency_plot))
    return cards_dir / f"{name}.md"


def plot_card_label_efficiency(name: str, report: dict[str, Any], reference: dict[str, Any] | None,
                               cards_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The card's label-efficiency plot: the entry and its random-init twin, and the supervised
    reference's curve (its report beside its card, under the same protocol) as the ceiling."""
    reports = [(name, report)]
    ceiling = label_efficiency_beside(cards_dir, reference["name"]) if reference else None
    if ceiling and ceiling.get("protocol_id") == report.get("protocol_id"):
        reports.append((f"{reference['name']} (pretrained with labels)", ceiling))
    return leaderboard.plot_label_efficiency(reports, path, random_init_of={name}, size=(5.5, 3.5))


def supervised_reference(name: str, registry=None) -> dict[str, Any] | None:
    """The leaderboard row of the supervised reference that registered entry `name` is measured
    against (same backbone, same protocol); None for an unregistered entry, a reference, or none."""
    rows = leaderboard.collect(registry)
    row = next((r for r in rows if r["name"] == name), None)
    if row is None or leaderboard.is_reference(row):
        return None
    return leaderboard.reference_for(row, rows)


def _hardware_text(hw) -> str:
    """run.json records hardware as a dict (see train.loop.describe_hardware); --hardware as text."""
    if not isinstance(hw, dict):
        return str(hw)
    accel = ", ".join(f"{n} {t}" for t, n in (hw.get("accelerators") or {}).items()) or "no accelerator"
    return (f"{hw.get('cpu')} ({hw.get('cpu_count')} cores), {accel}; {hw.get('strategy')} with "
            f"{hw.get('replicas')} replica(s); TensorFlow {hw.get('tensorflow')}, Keras {hw.get('keras')}")
