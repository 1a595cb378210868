"""What a method's model card says about it, kept with the method (`PretextMethod.card`).

`ssl_zoo.cards` renders every released entry's card from its metadata; the method-specific
text (paper, what the pretext task is and what its accuracy measures, its limitation) comes from
the entry's method class through the registry, so adding a method needs no change to the card
writer.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class MethodCard:
    title: str
    paper: str
    # The card's "Method" paragraph: what the pretext task is and what is released.
    paragraph: str
    # How many classes the pretext task chooses between (its chance level): a number, or the name
    # of the method configuration field that holds it.
    pretext_classes: int | str | None = None
    # What the held-out pretext accuracy is measured on, if not "the held-out {split} split of
    # {data}" (placeholders: the recipe's eval split, the training data's name), or a function of
    # the method configuration that returns it.
    pretext_eval: str | Callable[[dict], str] | None = None
    # The method's own limitation (one sentence), or a function of the method configuration.
    limitation: str | Callable[[dict], str] | None = None
    # The configuration field naming the side of the views the backbone was trained on (shown for
    # backbones without a fixed input size).
    view_size_field: str | None = None

    def classes(self, config: dict) -> int | None:
        classes = self.pretext_classes
        return config.get(classes) if isinstance(classes, str) else classes

    def pretext_eval_text(self, config: dict) -> str | None:
        return self.pretext_eval(config) if callable(self.pretext_eval) else self.pretext_eval

    def limitation_text(self, config: dict) -> str | None:
        return self.limitation(config) if callable(self.limitation) else self.limitation

    def view_size(self, config: dict) -> int | None:
        return config.get(self.view_size_field) if self.view_size_field else None


def pct(x: float | None) -> str:
    """An accuracy as the cards print it: 0.5642 -> "56.42 %"."""
    return "n/a" if x is None else f"{100 * x:.2f} %"
