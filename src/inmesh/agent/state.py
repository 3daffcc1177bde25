"""The agent's durable memory: which pods it enrolled, and in which network namespace.

Written atomically after every change, read once at start-up, so that a restarted agent knows
which pods to reconcile and what to put in the proxy's snapshot without guessing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from inmesh.errors import ConfigError
from inmesh.fsutil import atomic_write

STATE_VERSION = 1


@dataclass(frozen=True)
class EnrolledRecord:
    uid: str
    name: str
    namespace: str
    service_account: str
    netns_path: str
    netns_dev: int
    netns_ino: int
    ips: tuple[str, ...]
    container_id: str = ""


class StateFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict[str, EnrolledRecord]:
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"agent state {self.path} is corrupt: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ConfigError(f"agent state {self.path} has an unknown format")
        try:
            return {
                uid: EnrolledRecord(**{**rec, "ips": tuple(rec["ips"])})
                for uid, rec in doc["pods"].items()
            }
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"agent state {self.path} has a malformed record: {exc}") from exc

    def save(self, records: Mapping[str, EnrolledRecord]) -> None:
        doc = {"version": STATE_VERSION, "pods": {u: asdict(r) for u, r in records.items()}}
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())
