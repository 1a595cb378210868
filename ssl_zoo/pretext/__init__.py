"""Pretext transforms: tf.data batch transforms `images -> (inputs, targets)`, pure TF ops."""
