"""Kill soak of `ssl-zoo train` (issue 14): a run SIGKILLed at many random moments and resumed
each time must end exactly where an unbroken run of the same recipe and seed ends.

1. One process: an unbroken run, then one run directory trained by a chain of processes, each
   SIGKILLed after a random delay (uniform over 10-70 % of an unbroken run's wall time, so the kills
   land in start-up, restoring, tracing, steps, checkpoint writes, evaluation and the final export,
   and each process still gets some way), then one process that finishes. The final backbone weights and the history (every epoch's
   metrics and evaluation, wall-clock fields aside) are compared with the unbroken run's, exactly.
2. Two workers (`--local-workers 2`, MultiWorkerMirroredStrategy on 127.0.0.1): an unbroken run,
   then runs in which one worker (the chief, then the other) is SIGKILLed after the first
   checkpoint; the launcher stops the survivor, and the same command, rerun, resumes from the last
   checkpoint and must end as the unbroken two-worker run.

The data is a generated folder of PNG images (nothing downloaded); the model is the tests' tiny
RotNet, because what is measured is the trainer's bookkeeping, not learning. Each kill's phase is
the last line the process logged before it died.

    python benchmarks/kill_soak.py --kills 12 --out benchmarks/results/kill_soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WALL_CLOCK = ("seconds", "images_per_second")


def write_images(folder: Path, n: int = 64, size: int = 20, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        Image.fromarray((np.stack([a * yy, b * xx, c * yy * xx], -1) * 255).astype(np.uint8)).save(
            folder / f"{i:03d}.png")


def write_recipe(path: Path, epochs: int, steps_per_epoch: int) -> None:
    path.write_text("\n".join([
        'name = "kill_soak_rotnet"',
        "[method]", 'name = "rotnet"', "head_hidden_units = [16]", "image_size = 16",
        "[backbone]", 'arch = "resnet"', "depth = 18", "width = 0.125", 'stem = "cifar"', "image_size = 16",
        "[data]", 'source = "folder:images"', "image_size = 16", "shuffle_buffer = 64", 'eval_split = "train"',
        "[train]", f"epochs = {epochs}", f"steps_per_epoch = {steps_per_epoch}", "global_batch = 8", "seed = 0",
        "log_every = 1", "checkpoint_every = 3", "eval_every_epochs = 1",
        "[optimizer]", 'name = "sgd"', "learning_rate = 0.1", "warmup_epochs = 0.0",
    ]) + "\n")


def train_command(work: Path, out: Path, workers: int = 1) -> list[str]:
    cmd = [sys.executable, "-m", "ssl_zoo.cli", "train", str(work / "recipe.toml"), "--data-dir", str(work),
           "--out", str(out)]
    return cmd + (["--local-workers", str(workers)] if workers > 1 else [])


PROCESS_MARK = "=== kill_soak: a new process starts"


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("a") as f:
        f.write(PROCESS_MARK + "\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)


def last_line(log: Path) -> str:
    """The last line the latest process logged (TensorFlow's start-up noise aside)."""
    text = log.read_text(errors="replace").rsplit(PROCESS_MARK, 1)[-1]
    lines = [line for line in text.splitlines() if " INFO " in line or " WARNING " in line or "Error" in line]
    return lines[-1][-160:] if lines else "(start-up: nothing logged yet)"


def latest_checkpoint(out: Path) -> int:
    steps = [int(p.name.split("-")[1].split(".")[0]) for p in (out / "checkpoints").glob("ckpt-*.index")]
    return max(steps, default=0)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc), the launcher's worker processes."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def finish(cmd: list[str], log: Path, timeout: float = 900) -> float:
    t0 = time.time()
    proc = start(cmd, log)
    if proc.wait(timeout) != 0:
        raise SystemExit(f"run failed with status {proc.returncode}: {last_line(log)} (log: {log})")
    return time.time() - t0


def compare(run: Path, reference: Path) -> dict:
    """Largest absolute difference of the backbone weights and of the history's numbers."""
    import keras

    def weights(p):
        return keras.saving.load_model(p / "backbone.keras", safe_mode=True).get_weights()

    def history(p):
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK}
                for r in json.loads((p / "history.json").read_text())]

    wa, wb = weights(run), weights(reference)
    ha, hb = history(run), history(reference)
    same_keys = [sorted(a) for a in ha] == [sorted(b) for b in hb]
    history_diff = max((abs(float(a[k]) - float(b[k])) for a, b in zip(ha, hb) for k in a
                        if isinstance(a[k], (int, float)) and k in b), default=0.0) if same_keys else float("inf")
    weight_diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(wa, wb, strict=True))
    return {"max_weight_difference": weight_diff, "max_history_difference": history_diff,
            "history_epochs": [r["epoch"] for r in ha], "reference_epochs": [r["epoch"] for r in hb],
            "steps": json.loads((run / "run.json").read_text())["steps"],
            "equal": bool(same_keys and weight_diff == 0.0 and history_diff == 0.0)}


def single_process_soak(work: Path, kills: int, rng: np.random.Generator) -> dict:
    unbroken = work / "unbroken"
    t_unbroken = finish(train_command(work, unbroken), work / "unbroken.log")
    print(f"unbroken run: {t_unbroken:.1f} s", flush=True)
    soaked, log = work / "soaked", work / "soaked.log"
    events = []
    for i in range(kills):
        delay = float(rng.uniform(0.1, 0.7) * t_unbroken)
        before = latest_checkpoint(soaked) if soaked.exists() else 0
        proc = start(train_command(work, soaked), log)
        try:
            proc.wait(delay)
            events.append({"kill": i + 1, "delay_s": round(delay, 2), "killed": False, "status": proc.returncode,
                           "checkpoint_before": before, "phase": last_line(log)})
            print(f"run {i + 1}: finished before its kill at {delay:.1f} s", flush=True)
            break
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        events.append({"kill": i + 1, "delay_s": round(delay, 2), "killed": True, "checkpoint_before": before,
                       "checkpoint_after": latest_checkpoint(soaked) if soaked.exists() else 0,
                       "phase": last_line(log)})
        print(f"kill {i + 1}/{kills} at {delay:.1f} s: {events[-1]['phase']}", flush=True)
    finish(train_command(work, soaked), log)
    result = compare(soaked, unbroken)
    result.update(unbroken_seconds=round(t_unbroken, 1), kills=sum(e["killed"] for e in events), events=events,
                  resumes=log.read_text().count("resumed from"))
    return result


def two_worker_soak(work: Path, rng: np.random.Generator) -> dict:
    unbroken = work / "unbroken2"
    t_unbroken = finish(train_command(work, unbroken, workers=2), work / "unbroken2.log")
    print(f"unbroken two-worker run: {t_unbroken:.1f} s", flush=True)
    cases = {}
    for victim in (0, 1):
        out, log = work / f"killed_worker{victim}", work / f"killed_worker{victim}.log"
        proc = start(train_command(work, out, workers=2), log)
        deadline = time.time() + 600
        while (latest_checkpoint(out) if out.exists() else 0) < 3:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"two-worker run ended before its first checkpoint: {last_line(log)}")
            time.sleep(0.1)
        time.sleep(float(rng.uniform(0.0, 0.5)))
        workers = children(proc.pid)
        if len(workers) != 2:
            raise SystemExit(f"expected the launcher's two worker processes, found {workers}")
        at = latest_checkpoint(out)
        os.kill(workers[victim], signal.SIGKILL)
        status = proc.wait(120)  # the launcher stops the survivor and returns
        resume_t0 = time.time()
        finish(train_command(work, out, workers=2), log)
        text = log.read_text(errors="replace")
        result = compare(out, unbroken)
        result.update(killed_worker=victim, checkpoint_at_kill=at, launcher_status=status,
                      resumed=("resumed from" in text), resume_seconds=round(time.time() - resume_t0, 1))
        cases[f"worker{victim}"] = result
        print(f"worker {victim} killed at checkpoint {at}: launcher status {status}, "
              f"equal to the unbroken run: {result['equal']}", flush=True)
    return {"unbroken_seconds": round(t_unbroken, 1), "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int, default=8)
    parser.add_argument("--skip-workers", action="store_true", help="only the one-process soak")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="kill_soak_") as tmp:
        work = Path(tmp)
        write_images(work / "images")
        write_recipe(work / "recipe.toml", args.epochs, args.steps_per_epoch)
        report = {"command": "python benchmarks/kill_soak.py " + " ".join(sys.argv[1:]),
                  "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                  "recipe": {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "checkpoint_every": 3,
                             "model": "tiny RotNet (ResNet-18 w0.125, 16 px)"},
                  "one_process": single_process_soak(work, args.kills, rng)}
        if not args.skip_workers:
            report["two_workers"] = two_worker_soak(work, rng)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["one_process"]["equal"] and all(c["equal"] for c in report.get("two_workers", {}).get("cases", {}).values())
    print(f"wrote {args.out}: {'every resumed run equals its unbroken run' if ok else 'MISMATCH, see the report'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
