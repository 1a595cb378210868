"""tf.distribute strategies by name: default, mirrored, multiworker (TF_CONFIG), tpu."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from ssl_zoo.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multiworker", "tpu")


def split_cpu(n: int) -> None:
    """Splits the host CPU into `n` logical devices (for testing multi-replica code on one CPU).

    Must run before TensorFlow initialises its devices."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is not None and len(current) == n:
        return
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
    )


def build_strategy(kind: str = "default", devices: list[str] | None = None, tpu: str = "", logical_cpus: int = 0):
    """Returns the strategy that the training loop runs under.

    - default: one device (the first GPU if any, else the CPU).
    - mirrored: synchronous data parallel over `devices` (all local GPUs if None).
    - multiworker: one process per worker, cluster read from `TF_CONFIG`; collectives over the
      network (RING on CPU, NCCL picked automatically on GPUs).
    - tpu: `TPUStrategy` on the TPU named by `tpu` ("" = the local TPU VM).
    """
    if logical_cpus:
        split_cpu(logical_cpus)
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        if devices is None and logical_cpus:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if kind == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("multiworker strategy needs TF_CONFIG (cluster and task) in the environment")
        json.loads(os.environ["TF_CONFIG"])  # fail early on malformed JSON
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ConfigError(f"unknown strategy {kind!r}; one of {STRATEGIES}")


def is_chief(strategy) -> bool:
    """True on the one worker that writes logs, checkpoints and final artefacts."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def worker_dir(base: str, strategy) -> str:
    """Where this worker writes: `base` on the chief, a private temp folder on other workers.

    Under MultiWorkerMirroredStrategy every worker must take part in saving (the variables'
    values are gathered collectively), but only the chief's copy is kept."""
    if is_chief(strategy):
        return base
    resolver = strategy.cluster_resolver
    return os.path.join(base, f".worker_tmp_{resolver.task_type}_{resolver.task_id}")
