import pytest
from _lib.hbstats import BY_NAME, TARGETS, paired, relative, verdicts
from _lib.stats import Round

ROUNDS: list[Round] = [
    {"direct_same": {"tput_1_gbps": 10.0, "rr_p50_us": 8.0, "conn_per_s": 20000.0},
     "hbone_same": {"tput_1_gbps": 2.0, "rr_p50_us": 130.0, "conn_per_s": 900.0}},
    {"direct_same": {"tput_1_gbps": 20.0, "rr_p50_us": 10.0, "conn_per_s": 20000.0},
     "hbone_same": {"tput_1_gbps": 3.0, "rr_p50_us": 120.0, "conn_per_s": 1100.0}},
    {"direct_same": {"tput_1_gbps": None, "rr_p50_us": 9.0},
     "hbone_same": {"tput_1_gbps": 5.0, "rr_p50_us": 100.0}},
]  # fmt: skip


def test_paired_ratio_and_added_use_the_same_round() -> None:
    path = BY_NAME["hbone_same"]
    assert paired(ROUNDS, path, "tput_1_gbps") == pytest.approx((0.2 + 0.15) / 2)
    assert paired(ROUNDS, path, "rr_p50_us") == pytest.approx(110.0)  # 122, 110, 91


def test_cross_path_is_compared_with_direct_cross() -> None:
    rounds: list[Round] = [
        {"direct_cross": {"tput_1_gbps": 10.0}, "direct_same": {"tput_1_gbps": 1.0},
         "hbone_cross": {"tput_1_gbps": 4.0}}
    ]  # fmt: skip
    assert paired(rounds, BY_NAME["hbone_cross"], "tput_1_gbps") == pytest.approx(0.4)


def test_verdicts() -> None:
    rel = {"hbone_same": relative(ROUNDS, BY_NAME["hbone_same"])}
    abs_ = {"hbone_same": {"conn_per_s": 1000.0}}
    by_key = {(v["path"], v["metric"]): v for v in verdicts(rel, abs_)}
    assert by_key[("hbone_same", "tput_1_gbps")]["verdict"] == "MISS"  # 17.5% < 30%
    assert by_key[("hbone_same", "rr_p50_us")]["verdict"] == "MISS"  # +110 > 80
    assert by_key[("hbone_same", "conn_per_s")]["verdict"] == "PASS"  # >= 1000
    assert by_key[("hbone_same", "rr1_p50_us")]["verdict"] == "n/a"
    assert by_key[("hbone_cross", "tput_1_gbps")]["verdict"] == "n/a"
    assert len(by_key) == len(TARGETS)
