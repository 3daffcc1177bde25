"""Network namespace switching: the only module in inmesh that calls setns(2).

Contract: ``setns(fd, CLONE_NEWNET)`` changes the network namespace of the *calling OS thread* only.
inmesh never switches a thread that runs anything else (the asyncio loop, the main thread): code
that must run inside a namespace runs on a thread that enters it once, never switches back, and
exits when done (`run_in_netns`) or lives for as long as it is needed (`NetnsWorker`). A socket
keeps the namespace it was created in, so a worker can create sockets that the loop then uses.
Child processes inherit the namespace of the thread that forks them; for subprocesses we still
prefer ``nsenter --net=PATH`` (`nsenter_argv`) so that the command line says where it runs.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from inmesh.errors import KernelError

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 3)

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


@dataclass(frozen=True, order=True)
class NetnsId:
    """Identity of a network namespace: the (device, inode) pair of its nsfs file."""

    dev: int
    ino: int

    def __str__(self) -> str:
        return f"netns:[{self.ino}]@{self.dev}"


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace behind ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise KernelError(f"setns(fd={fd}) failed: {os.strerror(err)}", errno_=err)


def is_netns_fd(fd: int) -> bool:
    """True if ``fd`` refers to a network namespace (ioctl NS_GET_NSTYPE)."""
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def open_netns(path: str) -> int:
    """Open a netns file read-only and close-on-exec; refuse anything that is not a netns."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(f"cannot open netns {path}: {exc.strerror}", errno_=exc.errno) from exc
    if not is_netns_fd(fd):
        os.close(fd)
        raise KernelError(f"{path} is not a network namespace", errno_=errno.EINVAL)
    return fd


def netns_id_of_fd(fd: int) -> NetnsId:
    st = os.fstat(fd)
    return NetnsId(st.st_dev, st.st_ino)


def netns_id_of_path(path: str) -> NetnsId:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KernelError(f"cannot stat netns {path}: {exc.strerror}", errno_=exc.errno) from exc
    return NetnsId(st.st_dev, st.st_ino)


def current_netns_id() -> NetnsId:
    """Identity of the calling thread's network namespace."""
    return netns_id_of_path(f"/proc/self/task/{threading.get_native_id()}/ns/net")


def nsenter_argv(path: str) -> list[str]:
    """Prefix for a command that must run in the netns at ``path`` (network namespace only)."""
    return ["nsenter", f"--net={path}", "--"]


def run_in_netns(target: str | int, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread that enters ``target`` (a path or fd) and then exits."""
    worker = NetnsWorker(target, name="netns-oneshot")
    try:
        return worker.call(fn)
    finally:
        worker.close()


class NetnsWorker:
    """A thread that lives inside one network namespace and runs callables there, in order.

    The thread enters the namespace once at start; if that fails, the worker is dead and every
    call raises. It never switches back: ``close`` ends the thread.
    """

    def __init__(self, target: str | int, name: str = "netns-worker") -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._started: Future[None] = Future()
        fd = open_netns(target) if isinstance(target, str) else os.dup(target)
        self._thread = threading.Thread(target=self._main, args=(fd,), name=name, daemon=True)
        self._thread.start()
        self._started.result()

    def _main(self, fd: int) -> None:
        try:
            setns(fd)
        except KernelError as exc:
            self._started.set_exception(exc)
            return
        finally:
            os.close(fd)
        self._started.set_result(None)
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # delivered to the caller, never swallowed
                fut.set_exception(exc)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        if not self._thread.is_alive():
            raise KernelError("netns worker is not running")
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        return fut

    def call(self, fn: Callable[[], T]) -> T:
        return self.submit(fn).result()

    def close(self) -> None:
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()
