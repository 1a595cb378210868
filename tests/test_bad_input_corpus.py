"""The generated bad-input corpus (tests/bad_input_corpus.py): every file's outcome as the
manifest says, one count per file however often it is read, and bounded memory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bad_input_corpus import write_corpus
from ssl_zoo.data.decode import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS, SkipStats, decode_file

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_inputs")
    return out / "corpus", write_corpus(out)


def _outcome(path: bytes) -> tuple[str, np.ndarray | None]:
    stats = SkipStats()
    image = decode_file(path, 8, stats)
    if image is None:
        (reason,) = stats.counts()
        return f"skip:{reason}", None
    return (f"convert:{','.join(stats.converted)}" if stats.converted else "ok"), image


def test_every_file_is_read_converted_or_skipped_as_the_manifest_says(corpus):
    root, manifest = corpus
    for rel, expected in manifest["images"].items():
        got, image = _outcome(os.fsencode(root / rel))
        assert got.startswith(expected), (rel, expected, got)
        if image is not None:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, rel
    # The conversions give what the file shows: EXIF orientation applied (16x32 stored, 32x16 shown),
    # 16-bit white stays white, transparent pixels go on white.
    assert _outcome(os.fsencode(root / "odd/exif_rotated.jpg"))[1].shape == (32, 16, 3)
    assert _outcome(os.fsencode(root / "odd/sixteen_bit.png"))[1].min() == 255
    assert _outcome(os.fsencode(root / "odd/one_bit.png"))[1].max() == 255


@pytest.mark.parametrize("cache", [False, True])
def test_the_pipeline_counts_each_bad_file_once_over_epochs_and_keeps_the_rest(corpus, cache):
    from ssl_zoo.data.pipeline import build_dataset
    from ssl_zoo.data.sources import ImageFolderSource

    root, manifest = corpus
    expected = manifest["images"]
    usable = [r for r, e in expected.items() if not e.startswith("skip:")]
    source = ImageFolderSource(root, cache=cache)
    paths, labels, classes = source._list("train")
    assert classes == manifest["classes"]
    listed = sorted(os.fsdecode(p)[len(str(root)) + 1:] for p in paths)
    assert listed == sorted(expected), "the listing is every image file once: no loop, no ignored name"
    seen = 0
    for _ in range(3):  # three epochs: each bad file is met three times, counted once
        for images, _labels in build_dataset(source, "train", batch_size=8, image_size=16, augment="center"):
            seen += images.shape[0]
    assert seen == 3 * len(usable)
    tally: dict[str, int] = {}
    for e in expected.values():
        if e.startswith("skip:"):
            tally[e[5:]] = tally.get(e[5:], 0) + 1
    counts = source.stats.counts()
    loops = counts.pop("directory already listed (symlink loop or second link)")
    assert loops == len(manifest["loops"])
    for prefix, n in tally.items():
        assert sum(v for k, v in counts.items() if k.startswith(prefix)) == n, (prefix, counts)
    assert sum(counts.values()) == sum(tally.values())
    summary = source.stats.summary()
    assert "bomb_square.png" in summary and "truncated.jpg" in summary


def test_decoding_the_corpus_stays_within_a_memory_bound(corpus, tmp_path):
    """The limits are read from each header before decoding: at most MAX_IMAGE_PIXELS (2**25, 96 MiB
    as RGB) and a long side at most MAX_ASPECT_RATIO times the short one. Without them the corpus's
    two bombs (a few KB each) decode to 1.2 GB and 3.2 M pixels that the pipeline upscales 4x. The
    whole corpus, decoded three times in a process of its own, peaks under 300 MiB."""
    root, manifest = corpus
    assert MAX_IMAGE_PIXELS == 2**25 and MAX_ASPECT_RATIO == 32
    script = (
        "import json, os, sys\n"
        "from ssl_zoo.data.decode import SkipStats, decode_file\n"
        "root, names = sys.argv[1], json.loads(open(sys.argv[2]).read())\n"
        "for _ in range(3):\n"
        "    for rel in names:\n"
        "        decode_file(os.fsencode(os.path.join(root, rel)), 8, SkipStats())\n"
        # VmHWM is this process's own peak: ru_maxrss would carry pytest's across the exec.
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    )
    names = tmp_path / "names.json"
    names.write_text(json.dumps(list(manifest["images"])))
    out = subprocess.run([sys.executable, "-c", script, str(root), str(names)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    assert out.returncode == 0, out.stderr[-2000:]
    peak_mib = int(out.stdout.split()[-1]) / 1024
    assert peak_mib < 300, f"peak RSS {peak_mib:.0f} MiB"


def test_the_corpus_script_runs_on_its_own(tmp_path):
    out = subprocess.run([sys.executable, str(HERE / "bad_input_corpus.py"), str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "image files" in out.stdout and (tmp_path / "manifest.json").exists()
