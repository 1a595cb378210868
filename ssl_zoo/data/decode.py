"""Robust image decoding for user image folders.

A folder of user images is untrusted input: a truncated JPEG or a stray text file decoded inside a
TF graph raises an op error that kills the `tf.data` iterator, i.e. the whole training run. So
folder images are decoded with Pillow inside `tf.numpy_function`: every failure becomes a Python
exception that we catch, count and report, and the example is dropped. Images that can be used are
converted instead: greyscale, palette, CMYK and RGBA become RGB, 16-bit images are scaled to 8 bit,
EXIF rotation is applied, and images smaller than the crop are upscaled later by the pipeline
(unless they are below `min_side`, which is too small to mean anything and is skipped).

Memory is bounded per image before anything is decoded: the size in the file's header (Pillow
reads only the header on `Image.open`) must be at most `MAX_IMAGE_PIXELS` pixels and its long side
at most `MAX_ASPECT_RATIO` times its short side, or the file is skipped as a decompression bomb.
Both are needed: a 48 KB 20001x20001 PNG decodes to 1.2 GB, and a 467-byte 8x400000 PNG is only
3.2 M pixels but is a strip that the pipeline upscales to the crop size along its short side (x4
for a 32 px crop), which took 7 GiB of peak memory.

Skips are counted per file: a bad file met in every epoch (or by every view) counts once.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import threading

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Per-image limits, checked on the header before decoding (module docstring). 2**25 pixels (e.g.
# 8192x4096) is 96 MiB as 8-bit RGB; no photo has a long side 32x its short side (a 360-degree
# panorama is about 4-8x).
MAX_IMAGE_PIXELS = 2**25
MAX_ASPECT_RATIO = 32
# Pillow's own guard, for whatever opens images without `decode_file`: it warns above this and
# raises DecompressionBombError above twice this.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def display_path(path) -> str:
    """A path as text that can always be printed and logged: a file name that is not valid UTF-8
    (bytes, or a str with surrogate escapes from os.fsdecode) shows its bad bytes as \\xNN."""
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


class SkipStats:
    """Thread-safe counts of skipped inputs by reason, with a few example paths per reason. An input
    is counted once, however often it is met (every epoch, every view reads the same file again)."""

    def __init__(self, examples_per_reason: int = 5):
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()
        self._counts: collections.Counter = collections.Counter()
        self._examples: dict[str, list[str]] = collections.defaultdict(list)
        self._examples_per_reason = examples_per_reason
        self.converted: collections.Counter = collections.Counter()

    def skip(self, reason: str, path) -> None:
        path = display_path(path)
        with self._lock:
            if (reason, path) in self._seen:
                return
            self._seen.add((reason, path))
            self._counts[reason] += 1
            first = self._counts[reason] == 1
            if len(self._examples[reason]) < self._examples_per_reason:
                self._examples[reason].append(path)
        if first:
            log.warning("skipping %s: %s (further ones are counted, see the summary)", path, reason)

    def convert(self, what: str) -> None:
        with self._lock:
            self.converted[what] += 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def summary(self) -> str:
        with self._lock:
            if not self._counts:
                return "no input skipped"
            parts = [
                f"{n} {reason} (e.g. {', '.join(self._examples[reason])})"
                for reason, n in self._counts.most_common()
            ]
            return f"skipped {sum(self._counts.values())} inputs: " + "; ".join(parts)


def to_rgb_uint8(img: Image.Image, stats: SkipStats | None = None) -> np.ndarray:
    """Converts any Pillow image to an HxWx3 uint8 array."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) greyscale: scale the full range to 8 bit; Pillow's own
        # convert("L") would clip everything above 255 to white.
        arr = np.asarray(img, dtype=np.float64)
        max_value = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / max_value * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if stats is not None:
            stats.convert("16-bit")
        return np.repeat(arr[..., None], 3, axis=-1)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite transparent pixels onto white rather than whatever colour they stored.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
        if stats is not None:
            stats.convert("alpha")
    elif mode != "RGB" and stats is not None:
        stats.convert(mode)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


BOMB_PIXELS = f"decompression bomb (over {MAX_IMAGE_PIXELS:,} pixels, not decoded)"
BOMB_ASPECT = f"decompression bomb (long side over {MAX_ASPECT_RATIO}x the short one, not decoded)"


def too_large(size: tuple[int, int]) -> str | None:
    """Why an image of `size` (width, height, from its header) is refused before decoding, or None."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        return BOMB_PIXELS
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        return BOMB_ASPECT
    return None


def decode_file(path: str | bytes, min_side: int, stats: SkipStats) -> np.ndarray | None:
    """Decodes one file to HxWx3 uint8, or counts it as skipped and returns None. `path` may be bytes
    (a file name that is not UTF-8 is read as it is)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        stats.skip(f"unreadable ({e.__class__.__name__})", path)
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            refused = too_large(img.size)
            if refused:
                stats.skip(refused, path)
                return None
            img.load()  # forces the full decode: truncated files fail here
            arr = to_rgb_uint8(img, stats)
    except Image.UnidentifiedImageError:
        stats.skip("not an image", path)
        return None
    except Image.DecompressionBombError:  # Pillow's own check, on open, above twice its limit
        stats.skip(BOMB_PIXELS, path)
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        stats.skip(f"corrupt or truncated ({e.__class__.__name__})", path)
        return None
    if min(arr.shape[:2]) < min_side:
        stats.skip(f"smaller than {min_side} px", path)
        return None
    return arr
