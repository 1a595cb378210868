"""ssl_zoo: self-supervised pretext methods for Keras 3 / TensorFlow, with pretrained backbones."""

import os as _os
import sys as _sys

ONEDNN_FIX = ("import ssl_zoo before keras and tensorflow (`import ssl_zoo, keras`), or set "
              "TF_ENABLE_ONEDNN_OPTS=1 in the environment before Python starts "
              "(`export TF_ENABLE_ONEDNN_OPTS=1`)")


def _onednn_warning(user_value, tensorflow_imported: bool, onednn_enabled) -> str | None:
    """The warning to give when TensorFlow was imported before ssl_zoo with oneDNN off and the
    user did not ask for that (TF_ENABLE_ONEDNN_OPTS unset); None otherwise."""
    if user_value is not None or not tensorflow_imported or onednn_enabled is not False:
        return None
    return ("TensorFlow was imported before ssl_zoo, so ssl_zoo could not switch oneDNN on and it is off "
            "(about half the training speed on CPU, README 'Notes on this machine's CPU'); to fix it, "
            + ONEDNN_FIX + ". Set TF_ENABLE_ONEDNN_OPTS=0 to keep it off without this warning.")


def _tensorflow_onednn_enabled():
    """Whether the TensorFlow already imported runs with oneDNN (None where it cannot be told)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except Exception:  # another TensorFlow build or layout: say nothing rather than guess
        return None


# Measured on a 2-core Xeon: TF 2.21's CPU wheel trains our ResNets 2x faster with oneDNN's
# kernels switched on explicitly (347 img/s with it set to 1, 183 with 0, 161 unset). Only effective if set before TensorFlow is
# first imported; users can still set it to 0 themselves. `import keras, ssl_zoo` (TensorFlow
# first) is too late: that case is detected and warned about once, with the fix.
_user_onednn = _os.environ.get("TF_ENABLE_ONEDNN_OPTS")
if "tensorflow" in _sys.modules and _user_onednn is None:
    _message = _onednn_warning(None, True, _tensorflow_onednn_enabled())
    if _message:
        import warnings as _warnings

        _warnings.warn(_message, RuntimeWarning, stacklevel=2)
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
