"""The id of an evaluation protocol, so numbers measured under different protocols never mix."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def protocol_id(report: dict[str, Any]) -> str:
    """12 hex digits of the sha256 of an `ssl-zoo evaluate` report's dataset and "protocol" section
    (splits, image size, probe and kNN settings, numbers of images, seed): equal for two reports
    exactly when they were measured the same way."""
    canonical = json.dumps({"dataset": report.get("dataset"), "protocol": report.get("protocol")},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
