"""The agent's durable state survives a round trip and refuses corrupt files clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from inmesh.agent.state import EnrolledRecord, StateFile
from inmesh.errors import ConfigError


def test_round_trip(tmp_path: Path) -> None:
    rec = EnrolledRecord("u1", "web", "shop", "sa", "/run/netns/x", 4, 4026532000, ("10.0.0.2",), "c1")
    sf = StateFile(str(tmp_path / "s" / "state.json"))
    assert sf.load() == {}
    sf.save({"u1": rec})
    assert StateFile(sf.path).load() == {"u1": rec}


@pytest.mark.parametrize("content", ["{", '{"version": 99, "pods": {}}', '{"version": 1, "pods": {"u": {}}}'])
def test_corrupt_state_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(ConfigError):
        StateFile(str(path)).load()
