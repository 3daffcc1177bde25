"""Route drift: the ip rule and table-100 route per family, compared without I/O."""

from __future__ import annotations

from inmesh.redirect import RedirectSpec
from inmesh.redirect.routes import FamilyRoutes, route_drift

OK = FamilyRoutes(rules=1, route="ok")
NONE = FamilyRoutes(rules=0, route="absent")


def test_exact_state_has_no_drift() -> None:
    assert route_drift(RedirectSpec(), {4: OK, 6: NONE}) == []
    assert route_drift(RedirectSpec(ipv6=True), {4: OK, 6: OK}) == []


def test_missing_duplicate_and_wrong_are_drift() -> None:
    drift = route_drift(RedirectSpec(), {4: FamilyRoutes(2, "found type 1 scope 0 oif 3 instead"),
                                         6: NONE})
    assert drift == [
        "ip -4 rule fwmark 0x111/0xfff lookup 100: expected 1, found 2",
        "ip -4 route table 100 local default dev lo: found type 1 scope 0 oif 3 instead",
    ]
    assert route_drift(RedirectSpec(), {4: NONE, 6: NONE}) == [
        "ip -4 rule fwmark 0x111/0xfff lookup 100: expected 1, found 0",
        "ip -4 route table 100 local default dev lo: absent",
    ]


def test_leftovers_of_a_disabled_family_are_drift() -> None:
    assert route_drift(RedirectSpec(), {4: OK, 6: OK}) == [
        "ip -6 rule fwmark 0x111/0xfff lookup 100: leftover (1)",
        "ip -6 route table 100 local default dev lo: leftover",
    ]


def test_v6_route_is_not_required_when_lo_has_ipv6_disabled() -> None:
    state = {4: OK, 6: FamilyRoutes(rules=1, route="absent", route_possible=False)}
    assert route_drift(RedirectSpec(ipv6=True), state) == []
