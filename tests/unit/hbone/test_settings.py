"""HBONE settings: Istio's defaults, and bad values refused with the field's name."""

from __future__ import annotations

import pytest

from inmesh.errors import ConfigError
from inmesh.hbone.settings import HboneSettings, KiB, MiB


def test_defaults_are_istios() -> None:
    s = HboneSettings()
    assert (s.stream_window, s.connection_window, s.max_frame_size) == (4 * MiB, 16 * MiB, MiB)
    assert (s.server_max_streams, s.client_max_streams) == (200, 100)
    assert (s.client_max_header_list, s.server_max_header_list) == (16 * KiB, 64 * KiB)
    assert (s.ping_interval, s.ping_timeout) == (10.0, 20.0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("stream_window", 1000, "stream_window"),
    ("connection_window", 2**31, "connection_window"),
    ("max_frame_size", 1000, "max_frame_size"),
    ("max_frame_size", 1 << 24, "max_frame_size"),
    ("client_max_streams", 0, "client_max_streams"),
    ("ping_timeout", 0, "ping_timeout"),
    ("idle_timeout", -1, "idle_timeout"),
    ("relay_chunk", 0, "relay_chunk"),
])
def test_bad_values_name_their_field(field: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HboneSettings(**{field: value})  # type: ignore[arg-type]


def test_connection_window_below_the_stream_window_is_refused() -> None:
    with pytest.raises(ConfigError, match="4x"):
        HboneSettings(stream_window=8 * MiB, connection_window=4 * MiB)
