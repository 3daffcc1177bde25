from _lib.profilecats import (
    KERNEL,
    LIBC,
    category_of,
    libc_callers,
    perf_dsos,
    perf_symbols,
    pyspy_shares,
)
from hypothesis import given
from hypothesis import strategies as st

RAW = "\n".join([
    # the event loop waiting: idle, dropped
    "MainThread;Runner.run (asyncio/runners.py:118);uv__io_poll (linux.c:1452);"
    "epoll_pwait (libc.so.6) 50",
    # a worker thread waiting on its queue: idle, dropped
    "Thread.run (threading.py:982);_queue_SimpleQueue_get (_queuemodule.c:253);"
    "PyThread_acquire_lock_timed (libpython3.11.so.1.0);0x7f01 (libc.so.6) 30",
    # a send: kernel
    "_Pump.stream_to_sock (inmesh/hbone/relay.py:65);send (libc.so.6) 10",
    # a copy under h2: libc, called for h2
    "DataFrame.serialize_body (hyperframe/frame.py:307);0x7fb133aa3f16 (libc.so.6) 6",
    # crypto under the ssl module
    "SSLObject.write (ssl.py:930);SSL_write_ex (libssl.so.3);0x7fb1 (libcrypto.so.3) 4",
])  # fmt: skip


def test_idle_stacks_are_dropped_and_innermost_category_wins() -> None:
    shares = pyspy_shares(RAW)
    assert shares["busy_samples"] == 20
    assert shares["idle_samples"] == 80
    assert shares[KERNEL] == 0.5
    assert shares[LIBC] == 0.3
    assert shares["TLS: crypto (libcrypto: AES-GCM, handshakes)"] == 0.2


def test_libc_callers() -> None:
    callers = libc_callers(RAW)
    assert callers == {"HTTP/2: h2, hpack, hyperframe (framing, flow control, headers)": 0.3}


def test_category_of() -> None:
    assert category_of("recv (libc.so.6)") == KERNEL
    assert category_of("__memmove_avx512_unaligned_erms (libc.so.6)") == LIBC
    assert str(category_of("Encoder.encode (hpack/hpack.py:250)")).startswith("HTTP/2")
    assert category_of("PyEval (libpython3.11.so.1.0)") is None


def test_perf_reports_with_trailing_spaces() -> None:
    dso = "# comment\n    40.51%  [kernel.kallsyms]          \n    21.90%  libpython3.11.so.1.0  \n"
    assert perf_dsos(dso) == {"[kernel.kallsyms]": 40.51, "libpython3.11.so.1.0": 21.9}
    sym = "    12.16%  libc.so.6  [.] __memmove_avx512_unaligned_erms\n     1.0%  x  [k] y  \n"
    assert perf_symbols(sym) == [("libc.so.6 __memmove_avx512_unaligned_erms", 12.16),
                                 ("x y", 1.0)]  # fmt: skip


@given(
    st.lists(
        st.tuples(
            st.lists(st.text(alphabet="abc (.)/:0x_;", max_size=12), min_size=1, max_size=5),
            st.integers(1, 50),
        ),
        max_size=8,
    )
)
def test_shares_of_any_collapsed_text_sum_to_one(stacks: list[tuple[list[str], int]]) -> None:
    text = "\n".join(";".join(f.replace(";", "") or "f" for f in fr) + f" {n}" for fr, n in stacks)
    shares = pyspy_shares(text)
    parts = [v for k, v in shares.items() if not k.endswith("_samples")]
    if shares["busy_samples"]:
        assert abs(sum(parts) - 1.0) < 1e-9
    else:
        assert parts == []
