"""ssl_zoo: self-supervised pretext methods for Keras 3 / TensorFlow, with pretrained backbones."""

import os as _os

# Measured on a 2-core Xeon: TF 2.21's CPU wheel trains our ResNets 2x faster with oneDNN's
# kernels switched on explicitly (347 img/s with it set to 1, 183 with 0, 161 unset). Only effective if set before TensorFlow is
# first imported; users can still set it to 0 themselves.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"


def load_backbone(source, stages=None, trainable=None, verify=True):
    """A pretrained backbone as a `keras.Model` (images in [0, 255] -> features); see
    `ssl_zoo.loader.load_backbone`. Imported lazily so that `import ssl_zoo` stays cheap."""
    from ssl_zoo.loader import load_backbone as _load

    return _load(source, stages=stages, trainable=trainable, verify=verify)


def list_entries():
    """The zoo's released entries (see `ssl-zoo list`)."""
    from ssl_zoo.zoo import list_entries as _list

    return _list()


__all__ = ["__version__", "list_entries", "load_backbone"]
