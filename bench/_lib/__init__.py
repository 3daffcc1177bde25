"""Building blocks of the benchmarks (bench/inpod.py, bench/hbone.py).

Run inside pods: `rr` (1-byte request/response echo server and client), `connrate` (new
connections per second: server and client). Pure: `stats` (percentiles, medians, paired ratios,
in-pod targets), `hbstats` (HBONE paths, comparisons and targets), `meshcheck` (ztunnel's
counters and /config_dump: did a path go where it claims), `profilecats` (py-spy and perf
output into shares). Around the measurements: `procstat` (CPU and socket readings from /proc,
CPU pinning), `benchlab` (the private lab and the processes started in its pods), `runctl`
(machine description, background load, signals), `profiling` (py-spy and perf attached to
ztunnel), `report` and `hbreport` (the tables).
"""
