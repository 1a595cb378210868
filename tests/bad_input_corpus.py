"""A corpus of bad and unusual image files, generated (nothing downloaded), with what the zoo must
do with each: read it as it is, convert it (counted by kind), or skip it (counted by reason).

    python tests/bad_input_corpus.py OUT_DIR     # writes OUT_DIR/corpus/<class>/... and manifest.json

`tests/test_bad_input_corpus.py` generates it, decodes every file on its own and through the
pipeline (streaming and cached), and checks each outcome and the counts against the manifest, and
that decoding the whole corpus stays within a memory bound (the per-image limits of
`ssl_zoo.data.decode`: at most MAX_IMAGE_PIXELS pixels and a long side at most MAX_ASPECT_RATIO
times the short one, read from the header before anything is decoded).

Expectations: "ok"; "convert:KIND" (KIND as `SkipStats.converted` counts it); "skip:REASON" where
REASON is the start of the skip reason. Files without an image extension are not in the manifest's
images (the listing ignores them and says so); they are listed under "ignored".
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (20, 24)  # height, width of the ordinary images


def _rgb(seed: int, size=SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)


def _png_header_only(path: Path, width: int, height: int, rows: int | None = None) -> None:
    """A valid PNG header claiming width x height, with `rows` rows of zeros compressed (a few KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * width
    idat = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _exif_rotated_jpeg(path: Path) -> None:
    img = Image.fromarray(_rgb(30, (16, 32)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(path, exif=exif.tobytes())


def write_corpus(out: Path) -> dict:
    """Writes the corpus under out/corpus and returns (and writes) the manifest."""
    root = out / "corpus"
    good, odd = root / "good", root / "odd"
    for d in (good, odd):
        d.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}

    def put(rel: str, what: str) -> Path:
        expect[rel] = what
        return root / rel

    # Ordinary files, every extension the reader takes.
    Image.fromarray(_rgb(1)).save(put("good/rgb.jpg", "ok"))
    Image.fromarray(_rgb(2)).save(put("good/rgb.png", "ok"))
    Image.fromarray(_rgb(3)).save(put("good/rgb.webp", "ok"), lossless=True)
    Image.fromarray(_rgb(4)).save(put("good/rgb.bmp", "ok"))
    Image.fromarray(_rgb(5)).save(put("good/UPPER.JPEG", "ok"))
    Image.fromarray(_rgb(6)).save(put("good/png_named.jpg", "ok"), format="PNG")  # content decides, not the name
    Image.fromarray(_rgb(7, (10, 10))).save(put("good/smaller_than_crop.png", "ok"))  # upscaled by the pipeline
    (good / "deep" / "deeper").mkdir(parents=True)
    Image.fromarray(_rgb(8)).save(put("good/deep/deeper/nested.png", "ok"))
    # Conversions, counted by kind.
    Image.fromarray(_rgb(9)[..., 0]).save(put("odd/grey.png", "convert:L"))
    Image.fromarray(_rgb(10)).convert("P").save(put("odd/palette.png", "convert:P"))
    pal = Image.fromarray(_rgb(11)).convert("P")
    pal.info["transparency"] = 0
    pal.save(put("odd/palette_transparent.png", "convert:alpha"), transparency=0)
    Image.fromarray(np.dstack([_rgb(12), np.full(SIZE, 100, np.uint8)])).save(put("odd/rgba.png", "convert:alpha"))
    Image.fromarray(_rgb(13)[..., 0]).convert("LA").save(put("odd/grey_alpha.png", "convert:alpha"))
    Image.fromarray(np.full(SIZE, 65535, np.uint16)).save(put("odd/sixteen_bit.png", "convert:16-bit"))
    Image.fromarray(_rgb(14)).convert("CMYK").save(put("odd/cmyk.jpg", "convert:CMYK"))
    Image.fromarray(_rgb(15)[..., 0] > 128).save(put("odd/one_bit.png", "convert:1"))
    _exif_rotated_jpeg(put("odd/exif_rotated.jpg", "ok"))
    # Skips, counted by reason, never a crash.
    full = (good / "rgb.jpg").read_bytes()
    put("odd/truncated.jpg", "skip:corrupt or truncated").write_bytes(full[: len(full) // 2])
    png = (good / "rgb.png").read_bytes()
    put("odd/truncated.png", "skip:corrupt or truncated").write_bytes(png[: len(png) // 2])
    put("odd/text_named.jpg", "skip:not an image").write_bytes(b"this is text, not a JPEG")
    put("odd/html_named.png", "skip:not an image").write_text("<html><body>404 Not Found</body></html>")
    put("odd/empty.png", "skip:not an image").write_bytes(b"")
    put("odd/random_bytes.webp", "skip:not an image").write_bytes(np.random.default_rng(0).bytes(2048))
    Image.fromarray(_rgb(16, (4, 4))).save(put("odd/four_pixels.png", "skip:smaller than"))
    _png_header_only(put("odd/bomb_square.png", "skip:decompression bomb (over"), 20_001, 20_001, rows=64)
    _png_header_only(put("odd/bomb_strip.png", "skip:decompression bomb (long side"), 8, 400_000)
    os.symlink(root / "odd" / "does_not_exist.png", put("odd/dangling_link.png", "skip:unreadable"))
    # A name that is not UTF-8 (a Latin-1 byte): read as the bytes the file system holds.
    latin1 = os.fsencode(odd) + b"/caf\xe9.png"
    buf = io.BytesIO()  # (Pillow saves to str paths only: write the bytes ourselves)
    Image.fromarray(_rgb(17)).save(buf, format="PNG")
    with open(latin1, "wb") as f:
        f.write(buf.getvalue())
    expect[os.fsdecode(b"odd/caf\xe9.png")] = "ok"
    # Not images at all, by name: ignored by the listing (and said so), not counted as skips.
    (odd / "notes.txt").write_text("a note")
    (odd / "image.jpg.part").write_bytes(full)
    # A folder named like an image, and a link back up the tree: listed as folders, once.
    (odd / "folder.jpg").mkdir()
    Image.fromarray(_rgb(18)).save(put("odd/folder.jpg/inside.png", "ok"))
    os.symlink(root, odd / "loop_to_root")
    manifest = {
        "images": expect,
        "ignored": ["odd/notes.txt", "odd/image.jpg.part"],
        "loops": ["odd/loop_to_root"],
        "classes": ["good", "odd"],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=True))
    return manifest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/bad_input_corpus.py OUT_DIR")
    m = write_corpus(Path(sys.argv[1]))
    kinds = sorted({v.split(":")[0] for v in m["images"].values()})
    print(f"wrote {len(m['images'])} image files ({', '.join(kinds)}) under {Path(sys.argv[1]) / 'corpus'}")
