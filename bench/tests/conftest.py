"""The benchmark's own tests: pure parts and the connection-rate tool on loopback.

Run with ``.venv/bin/pytest -q bench/tests``. The scripts import ``_lib`` as a top-level
package (they run from bench/), so bench/ goes on sys.path here.
"""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
