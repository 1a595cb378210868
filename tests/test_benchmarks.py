"""The benchmarks' own arithmetic: the FLOP count that `benchmarks/throughput.py` divides its
timings by (the timings themselves are measured by the scripts, never asserted by tests)."""

import sys
from pathlib import Path

import keras
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from throughput import median_round, step_flops  # noqa: E402


def test_step_flops_counts_a_convolutions_forward_and_backward_passes():
    batch, side, cin, cout = 4, 8, 3, 16
    model = keras.Sequential([keras.Input((side, side, cin)), keras.layers.Conv2D(cout, 3, padding="same"),
                              keras.layers.GlobalAveragePooling2D()])

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    x = tf.zeros((batch, side, side, cin))
    counted = step_flops(step.get_concrete_function(x))
    conv = 2 * batch * side * side * 3 * 3 * cin * cout  # multiply-adds of the forward convolution
    # Forward, the filter's gradient and the input's: three convolutions' worth, plus a few
    # element-wise ops (bias, pooling) of the output's size.
    assert 3 * conv <= counted["flops"] <= 3 * conv + 10 * batch * side * side * cout
    assert counted["uncounted_calls"] == 0

    inner = tf.function(lambda t: model(t))

    @tf.function
    def nested(t):
        return inner(t)

    assert step_flops(nested.get_concrete_function(x))["uncounted_calls"] == 1


def test_median_round_keeps_the_pair_timed_together():
    def run(rate):
        return {"backbone_images_per_second": rate}

    rounds = [(run(90), run(100)), (run(50), run(100)), (run(120), run(100)), (run(80), run(200))]
    method, supervised, ratio, ratios = median_round(rounds)
    assert ratios == [0.9, 0.5, 1.2, 0.4] and ratio == 0.5  # the lower middle of four
    assert method is rounds[1][0] and supervised is rounds[1][1]
    assert median_round(rounds[:3])[2] == 0.9


def test_method_recipe_applies_overrides_as_training_does():
    """`--set` reaches the recipe a benchmark part builds its method from, parsed as `ssl-zoo train
    --set` parses it; without overrides the released recipe is used as it is."""
    import pytest

    from ssl_zoo.errors import ConfigError
    from throughput import method_recipe

    released = method_recipe("super_resolution")
    variant = method_recipe("super_resolution", ["method.decoder_channels=8", 'method.skip_stages=["stage3"]'])
    assert released.method["decoder_channels"] == 16 and variant.method["decoder_channels"] == 8
    assert list(variant.method["skip_stages"]) == ["stage3"]
    with pytest.raises(ConfigError, match="section.key=value"):
        method_recipe("super_resolution", ["decoder_channels=8"])
