"""Building blocks of the in-pod benchmark (bench/inpod.py).

`rr` (request/response echo server and client, run inside pods), `stats` (pure arithmetic:
percentiles, medians, ratios, targets), `procstat` (CPU and socket readings from /proc),
`benchlab` (the private lab and the processes started in its pods), `report` (table and JSON).
"""
