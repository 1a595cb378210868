"""Multi-worker launching: TF_CONFIG for a cluster, supervising local workers, the CLI's options."""

import json
import sys
import time

import pytest

from ssl_zoo.cli import main
from ssl_zoo.train.launch import supervise, tf_config, without_option


def test_tf_config_names_the_cluster_and_this_worker():
    cfg = json.loads(tf_config(["a:1", "b:2"], 1))
    assert cfg == {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError, match="index 2 is not in 0..1"):
        tf_config(["a:1", "b:2"], 2)
    with pytest.raises(ValueError, match="host:port"):
        tf_config(["a"], 0)


def test_without_option_removes_both_spellings():
    argv = ["train", "r.toml", "--local-workers", "2", "--out", "x", "--strategy=default"]
    assert without_option(argv, "--local-workers") == ["train", "r.toml", "--out", "x", "--strategy=default"]
    assert without_option(argv, "--strategy") == ["train", "r.toml", "--local-workers", "2", "--out", "x"]


def test_a_failing_worker_stops_the_others_and_its_status_is_returned(capsys):
    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"]
    failing = [sys.executable, "-c", "import sys, time; time.sleep(0.5); print('bad input'); sys.exit(3)"]
    start = time.monotonic()
    assert supervise([sleeper, failing], [None, None]) == 3
    assert time.monotonic() - start < 60  # the sleeper was stopped, not waited for
    out = capsys.readouterr().out
    assert "[worker 0] up" in out and "[worker 1] bad input" in out
    assert supervise([[sys.executable, "-c", "pass"]] * 2, [None, None]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--local-workers", "2", "--strategy", "mirrored"], "not --strategy mirrored"),
    (["--local-workers", "2", "--worker-hosts", "a:1,b:2", "--worker-index", "0"], "either --local-workers"),
    (["--worker-hosts", "a:1,b:2"], "needs --worker-index"),
    (["--worker-hosts", "a:1,b:2", "--worker-index", "5"], "index 5 is not in 0..1"),
])
def test_launch_option_mistakes_are_named(tmp_path, caplog, extra, message):
    assert main(["train", "recipe.toml", "--out", str(tmp_path / "run"), *extra]) == 2
    assert message in caplog.text
