"""RedirectSpec: the per-pod input is validated where it is built."""

from __future__ import annotations

import pytest

from inmesh.errors import ConfigError
from inmesh.redirect import RedirectSpec
from inmesh.redirect.model import hexmark


def test_defaults_are_ipv4_inbound_capture_no_dns() -> None:
    spec = RedirectSpec()
    assert spec.families() == (4,)
    assert spec.inbound_capture
    assert not spec.dns_capture


def test_families_in_order() -> None:
    assert RedirectSpec(ipv6=True).families() == (4, 6)
    assert RedirectSpec(ipv4=False, ipv6=True).families() == (6,)


def test_needs_a_family() -> None:
    with pytest.raises(ConfigError, match="family"):
        RedirectSpec(ipv4=False)


@pytest.mark.parametrize("name", ["", "eth0 x", "a" * 16, "veth+", 'x"y', "-i", "a/b", "ä"])
def test_rejects_interface_names_that_could_be_syntax(name: str) -> None:
    with pytest.raises(ConfigError, match="interface"):
        RedirectSpec(virtual_interfaces=(name,))


def test_rejects_a_bare_string_and_duplicates() -> None:
    with pytest.raises(ConfigError):
        RedirectSpec(virtual_interfaces="eth1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="duplicate"):
        RedirectSpec(virtual_interfaces=("eth1", "eth1"))


def test_accepts_real_interface_names() -> None:
    assert RedirectSpec(virtual_interfaces=("eth1", "tap0.100", "br_vm-1")).virtual_interfaces


def test_hexmark() -> None:
    assert hexmark(0x539, 0xFFF) == "0x539/0xfff"
    assert hexmark(0x111) == "0x111"
