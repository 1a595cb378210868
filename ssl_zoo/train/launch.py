"""Starting multi-worker runs (`MultiWorkerMirroredStrategy` reads its cluster from `TF_CONFIG`).

Two ways, both behind `ssl-zoo train`:

- `--worker-hosts h1:port,h2:port --worker-index I` on every machine of a cluster: this process
  becomes worker I (the same command everywhere, only the index differs); no hand-written JSON.
- `--local-workers N`: N worker processes on this host, on free local ports. A rehearsal of a
  cluster run on one machine (it is how the zoo tests multi-worker training), or one process per
  accelerator. The launcher streams every worker's output prefixed by its index, and if one
  worker fails it stops the others (they would otherwise wait forever in a collective) and exits
  with that worker's status.

Rerunning the same command resumes from the chief's checkpoints, as for one process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from ssl_zoo.errors import ConfigError

# After one worker fails, the others get SIGTERM and this long to save and exit before SIGKILL.
# Their checkpoint save is itself collective, so with a dead peer it cannot finish: keep it short.
TERMINATE_GRACE_SECONDS = 20.0


def tf_config(workers: Sequence[str], index: int) -> str:
    """The `TF_CONFIG` of worker `index` in a cluster of `workers` ("host:port" each)."""
    workers = list(workers)
    if not workers or any(w.count(":") != 1 or not w.split(":")[1].isdigit() for w in workers):
        raise ConfigError(f"worker hosts must be host:port, comma-separated; got {workers}")
    if not 0 <= index < len(workers):
        raise ConfigError(f"worker index {index} is not in 0..{len(workers) - 1} for {len(workers)} workers")
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def free_local_ports(n: int) -> list[int]:
    """`n` distinct TCP ports that are free on 127.0.0.1 now (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stream(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def supervise(commands: Sequence[Sequence[str]], envs: Sequence[dict]) -> int:
    """Runs the processes together; 0 when all succeed, else the first failure's exit status (the
    others are stopped). Output lines are prefixed with `[worker I]`."""
    procs: list[subprocess.Popen] = []
    threads = []
    try:
        for i, (cmd, env) in enumerate(zip(commands, envs)):
            proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            procs.append(proc)
            threads.append(threading.Thread(target=_stream, args=(proc, f"[worker {i}] "), daemon=True))
            threads[-1].start()
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                _stop(procs)
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs)
        return 130
    finally:
        for t in threads:
            t.join(timeout=5)


def run_local_workers(worker_argv: Sequence[str], n: int) -> int:
    """`worker_argv` (a whole command line) as `n` workers of one cluster on this host."""
    if n < 1:
        raise ConfigError(f"--local-workers must be >= 1, got {n}")
    workers = [f"127.0.0.1:{port}" for port in free_local_ports(n)]
    envs = [{**os.environ, "TF_CONFIG": tf_config(workers, i)} for i in range(n)]
    return supervise([list(worker_argv)] * n, envs)


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """`argv` without `option VALUE` / `option=VALUE` (to hand the rest of a command to the workers)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == option:
            skip = True
        elif not token.startswith(option + "="):
            out.append(token)
    return out
