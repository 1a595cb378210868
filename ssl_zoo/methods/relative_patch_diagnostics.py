"""Relative patch's own diagnostic: does the model use its context, or read where the neighbour
sits in the photo? (`RelativePatch.diagnose`, `ssl-zoo diagnose RUN`.)

Relative patch location (Doersch et al. 2015) is meant to be solved by relating the neighbour to
the centre patch. If the centre patch is not needed, the model found a shortcut: on small photos
the neighbour's absolute position (sky at the top, vignetting, framing) can give its offset
away. The context check measures pretext accuracy on held-out images three ways:

- `as_drawn`: centre and neighbour as the pretext task draws them (the held-out accuracy);
- `centre_from_other_image`: each centre patch replaced by the centre patch of the next image in
  the batch, so it no longer belongs to the neighbour's photo;
- `centre_blanked`: each centre patch replaced by the dataset mean colour.

A model that relates the two patches falls towards chance (1/8) in the last two; a model that
reads the neighbour's place in the photo keeps most of its accuracy. `context_share` is the
fraction of above-chance accuracy lost when the centre is blanked (1 = all accuracy needs the
centre, 0 = none does).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ssl_zoo.errors import ConfigError
from ssl_zoo.methods.card import pct as _pct

log = logging.getLogger(__name__)

CONDITIONS = ("as_drawn", "centre_from_other_image", "centre_blanked")


def ablate_centre(patches: np.ndarray, condition: str, fill: np.ndarray) -> np.ndarray:
    """patches [B, 2, P, P, 3] (centre first) with the centre patch replaced per `condition`."""
    if condition == "as_drawn":
        return patches
    out = patches.copy()
    if condition == "centre_from_other_image":
        out[:, 0] = np.roll(patches[:, 0], 1, axis=0)
    elif condition == "centre_blanked":
        out[:, 0] = fill
    else:
        raise ConfigError(f"condition must be one of {CONDITIONS}, got {condition!r}")
    return out


def context_check(pretext_model, batches, fill, chance: float) -> dict[str, Any]:
    """Accuracy of `pretext_model` on `(patches, labels)` batches under each condition."""
    correct = dict.fromkeys(CONDITIONS, 0)
    count = 0
    for patches, labels in batches:
        patches, labels = np.asarray(patches), np.asarray(labels)
        if len(labels) < 2:
            continue  # a one-image batch has no other image to take a centre from
        for condition in CONDITIONS:
            logits = pretext_model(ablate_centre(patches, condition, fill), training=False)
            correct[condition] += int((np.asarray(logits).argmax(-1) == labels).sum())
        count += len(labels)
    if count == 0:
        raise ConfigError("context check: no batch of at least 2 examples")
    accuracy = {c: correct[c] / count for c in CONDITIONS}
    above = accuracy["as_drawn"] - chance
    share = (accuracy["as_drawn"] - accuracy["centre_blanked"]) / above if above > 0 else None
    return {"accuracy": accuracy, "chance": chance, "examples": count, "context_share": share}


def run_context_check(method, run_dir: str | Path, recipe, *, data_dir=None, split: str | None = None,
                      max_examples: int | None = None, batch_size: int = 200) -> dict[str, Any]:
    """The check on a relative-patch training run folder (`ssl-zoo train --out`), whose recorded
    `recipe` (already corrected by the caller's overrides) built `method`.

    Held-out images: the recipe's eval split unless `split`; all of it, or its first
    `max_examples` in the split's order (an image folder lists by class). Their pretext batches
    come from the training pipeline (`build_pretext_dataset`, evaluation mode).
    """
    import keras

    from ssl_zoo.backbones.resnet import IMAGENET_MEAN
    from ssl_zoo.data.pipeline import build_pretext_dataset
    from ssl_zoo.data.sources import open_source
    from ssl_zoo.pretext.relative_patch import NUM_NEIGHBOURS

    run_dir = Path(run_dir)
    split = split or recipe.data.eval_split
    if not split:
        raise ConfigError("the recipe has no eval split; pass split=")
    # safe_mode: a run folder may come from elsewhere; no Lambda or pickled code is executed.
    model = keras.saving.load_model(run_dir / "pretext_model.keras", compile=False, safe_mode=True)
    source = open_source(recipe.data.source, data_dir)
    batch_size = min(batch_size, max_examples or batch_size)
    ds = build_pretext_dataset(source, split, method, batch_size=batch_size, image_size=recipe.data.image_size,
                               training=False)
    if max_examples:
        ds = ds.take(-(-max_examples // batch_size))
    batches = ((b["inputs"], b["targets"]) for b in ds.as_numpy_iterator())
    fill = 255.0 * np.asarray(method.backbone.get("mean", IMAGENET_MEAN), np.float32)
    report = context_check(model, batches, fill, chance=1.0 / NUM_NEIGHBOURS)
    report.update(data=recipe.data.source, split=split,
                  method={k: v for k, v in method.config().items() if k != "backbone"})
    return report


def card_lines(diagnostics: dict) -> list[str]:
    """The card's line for a recorded context check (none without one)."""
    cc = diagnostics.get("context_check")
    if not cc:
        return []
    acc = cc["accuracy"]
    share = cc.get("context_share")
    return [f"- Does it use its context? `ssl-zoo context-check` on {cc['examples']} held-out images "
            f"(`{cc.get('split')}` of {cc.get('data')}): {_pct(acc['as_drawn'])} as drawn, "
            f"{_pct(acc['centre_from_other_image'])} with the centre patch of another image, "
            f"{_pct(acc['centre_blanked'])} with the centre blanked (chance {_pct(cc['chance'])})"
            + (f"; {100 * share:.0f} % of its above-chance accuracy needs the centre patch (the rest survives "
               f"without it: cues such as where the neighbour lies in the photo)." if share is not None else ".")]
