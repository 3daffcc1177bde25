"""The per-measurement figures and progress lines both benchmarks print (`_lib.lines`)."""

from _lib.lines import THROUGHPUT_FIELDS, cpu_text, error_text, num, result_text, round_values


def test_round_values_take_each_field_and_leave_missing_ones_none() -> None:
    rec = {"gbps": 5.9, "cpu_s_per_gb": 2.4, "iperf_client_cpu_pct": 9.0}
    assert round_values("tput_1", rec, THROUGHPUT_FIELDS) == {
        "tput_1_gbps": 5.9, "tput_1_cpu_s_per_gb": 2.4, "tput_1_client_pct": 9.0,
        "tput_1_server_pct": None,
    }


def test_progress_pieces_show_latency_or_throughput_and_where_the_cpu_went() -> None:
    rr = {"p50_us": 77.64, "p99_us": None, "machine_busy_pct": 50.2,
          "machine_softirq_pct": 6.0, "iperf_client_cpu_pct": 99.0}
    assert result_text("rr1", rr) == "p50 77.6 us  p99 - us"
    assert cpu_text("rr1", rr, "80%") == "ztunnel 80%, softirq 6%, machine 50%"  # no iperf3
    tput = {"gbps": 5.8961, "retransmits": 0, "iperf_client_cpu_pct": 8.6,
            "iperf_server_cpu_pct": 18.2, "machine_busy_pct": 87.0}
    assert result_text("tput_4", tput) == "5.90 Gb/s  retr 0"
    assert cpu_text("tput_4", tput, "144%/0%") == (
        "ztunnel 144%/0%, iperf3 9%/18%, softirq -%, machine 87%")
    assert error_text({"error": "path check failed"}) == "  ERROR: path check failed"
    assert error_text({}) == ""
    assert num(None) == "-"
