"""Extraction in worker processes: its time, memory and crashes become the item's error.

`ExtractPool` runs up to `size` worker processes. Each is a fresh interpreter
(`python -P -c ...`: nothing of the parent's threads, event loop or state is inherited) that
takes one item at a time over its stdin and stdout pipes: (key, bytes, ExtractLimits) in, the
text or a typed error out. For each item the worker lowers its own RLIMIT_AS to
`limits.memory_mib` (and RLIMIT_CPU to a backstop well above `limits.timeout_s`), and the parent
waits at most `limits.timeout_s`, reading and writing the pipes from the event loop without a
thread. A worker that runs out of time is killed and replaced; one that dies (a segfault, the
kernel's OOM killer) is replaced; in every case only that item fails, with a one-line
ExtractError: "timed out after 30 s", "ran out of memory (limit 1024 MiB)", "extraction
process crashed (SIGSEGV)"; the caps on pages and text come from the extractors themselves.

Lifetime: a pool starts workers when items need them and keeps them between items. Workers
idle for `idle_s` are stopped by the pool (a timer on the event loop that used them last), and a
worker that hears nothing for twice that long exits by itself, as it does when the parent goes
away (its stdin closes). `close()` (or leaving `async with pool:`) stops them now; any still
busy stop when their item ends. `atexit` kills whatever remains. `extract_isolated` uses the
pool of the innermost `async with ExtractPool(...)`, else a shared default pool.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import contextvars
import fcntl
import importlib
import logging
import math
import os
import pickle
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rag_service.errors import ExtractError, NoTextError, RagError
from rag_service.ingest.extract import (
    DEFAULT_LIMITS,
    ExtractLimits,
    check_extractable,
    extract_text,
)

__all__ = [
    "DEFAULT_LIMITS",
    "ExtractLimits",
    "ExtractPool",
    "close_default_pool",
    "default_pool",
    "extract_isolated",
]

log = logging.getLogger(__name__)

_HEADER = 8  # bytes of a frame's big-endian length
_MAX_FRAME = 1 << 34  # far above any reply; a larger length means a garbled stream
_MIB = 1024 * 1024
_F_SETPIPE_SZ = 1031  # Linux: bigger pipes, fewer wake-ups for big documents
_BOOT = "from rag_service.ingest.isolate import _worker_main; _worker_main()"
_RETIRE_RSS_MIB = 512  # a worker holding more memory than this is replaced after its item
_RETIRE_TASKS = 1000  # ... and one that has run this many items

Handler = Callable[[str, bytes, ExtractLimits], str]


class _ProtocolError(Exception):
    """The worker's stream made no sense."""


# ---------------------------------------------------------------------------------------------
# The worker process


def _read_exact(fd: int, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = os.read(fd, min(size - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_frame(fd: int) -> bytes:
    return _read_exact(fd, int.from_bytes(_read_exact(fd, _HEADER), "big"))


def _write_frame(fd: int, payload: bytes) -> None:
    _write_all(fd, len(payload).to_bytes(_HEADER, "big"))
    _write_all(fd, payload)


def _load_handler(spec: str) -> Handler:
    """`package.module:function`, a stand-in for extract_text (tests use it)."""
    module, _, name = spec.partition(":")
    handler: Handler = getattr(importlib.import_module(module), name)
    return handler


def _set_soft(which: int, soft: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
        soft = hard
    resource.setrlimit(which, (soft, hard))


def _portable(exc: Exception) -> Exception:
    """`exc`, with the worker's traceback as a note, if it survives pickling."""
    trace = "".join(traceback.format_exception(exc))[-4000:]
    try:
        exc.add_note(f"in extraction process {os.getpid()}:\n{trace}")
        copy = pickle.loads(pickle.dumps(exc))
    except Exception:
        copy = RuntimeError(f"{type(exc).__name__}: {_short(exc)}")
        copy.add_note(f"in extraction process {os.getpid()}:\n{trace}")
    return copy if isinstance(copy, Exception) else RuntimeError(type(exc).__name__)


def _run_one(handler: Handler, key: str, data: bytes, limits: ExtractLimits) -> tuple[Any, ...]:
    """(kind, value): ok/text, notext/message, error/message, memory/None, rag/message or
    bug/exception."""
    saved_as = resource.getrlimit(resource.RLIMIT_AS)[0]
    saved_cpu = resource.getrlimit(resource.RLIMIT_CPU)[0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_budget = math.ceil(usage.ru_utime + usage.ru_stime + 2 * limits.timeout_s + 5)
    outcome: tuple[Any, ...]
    bug: Exception | None = None
    try:
        _set_soft(resource.RLIMIT_CPU, cpu_budget)  # a backstop should the parent be gone
        _set_soft(resource.RLIMIT_AS, limits.memory_mib * _MIB)
        outcome = ("ok", handler(key, data, limits))
    except NoTextError as exc:
        outcome = ("notext", exc.message)
    except ExtractError as exc:
        outcome = ("error", exc.message)
    except MemoryError:
        outcome = ("memory", None)
    except RagError as exc:
        outcome = ("rag", exc.message)
    except Exception as exc:  # a bug: the parent raises it again, as if it had happened there
        bug = exc
    finally:
        _set_soft(resource.RLIMIT_AS, saved_as)
        _set_soft(resource.RLIMIT_CPU, saved_cpu)
    return ("bug", _portable(bug)) if bug is not None else outcome


def _rss_mib() -> float:
    """Memory the worker holds now. (Not ru_maxrss: Linux carries the parent's peak over into
    a child through vfork and exec, which would retire every worker of a big parent.)"""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / _MIB


def _worker_main() -> None:
    """Entry point of a worker process: argv = idle seconds, handler spec (or "")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash dumps no 1 GB core
    warnings.simplefilter("ignore")
    logging.getLogger().addHandler(logging.NullHandler())  # no library chatter on stderr
    out = os.dup(1)  # the reply pipe; stray prints go to stderr instead
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    idle_s = float(sys.argv[1])
    handler = _load_handler(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else extract_text
    _write_frame(out, pickle.dumps(("ready", os.getpid())))
    tasks = 0
    while True:
        readable, _, _ = select.select([0], [], [], idle_s)
        if not readable:
            return  # idle for long: the pool starts another worker when it needs one
        try:
            key, data, limits = pickle.loads(_read_frame(0))
        except EOFError:
            return  # the pool closed the pipe, or the parent is gone
        tasks += 1
        outcome = _run_one(handler, key, data, limits)
        del data
        retire = outcome[0] == "memory" or _rss_mib() > _RETIRE_RSS_MIB or tasks >= _RETIRE_TASKS
        try:
            _write_frame(out, pickle.dumps((*outcome[:2], retire), protocol=5))
        except (BrokenPipeError, MemoryError):
            return
        if retire:
            return


# ---------------------------------------------------------------------------------------------
# The parent's side


async def _wait_fd(fd: int, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _send(fd: int, payload: bytes) -> None:
    for part in (len(payload).to_bytes(_HEADER, "big"), payload):
        view = memoryview(part)
        while view:
            try:
                view = view[os.write(fd, view[: 1 << 20]) :]
            except BlockingIOError:
                await _wait_fd(fd, write=True)


async def _receive_exact(fd: int, size: int) -> bytearray:
    buf = bytearray()
    while len(buf) < size:
        try:
            chunk = os.read(fd, min(size - len(buf), 1 << 20))
        except BlockingIOError:
            await _wait_fd(fd, write=False)
            continue
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


async def _receive(fd: int) -> Any:
    size = int.from_bytes(await _receive_exact(fd, _HEADER), "big")
    if size > _MAX_FRAME:
        raise _ProtocolError(f"frame of {size} bytes")
    try:
        return pickle.loads(await _receive_exact(fd, size))
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, EOFError) as exc:
        if isinstance(exc, EOFError):
            raise
        raise _ProtocolError(str(exc)) from exc


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes], generation: int) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.generation = generation
        self.wfd = proc.stdin.fileno()
        self.rfd = proc.stdout.fileno()
        for fd in (self.wfd, self.rfd):
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
        self.last_used = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (if still running) and close the pipes; reaped by `reaped()` later."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()

    def reaped(self, wait_s: float = 0.0) -> bool:
        if not wait_s:
            return self.proc.poll() is not None
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    async def exit_status(self, wait_s: float = 5.0) -> int | None:
        """The worker's exit status once it has gone (None: it did not, and was killed)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if (status := self.proc.poll()) is not None:
                return status
            await asyncio.sleep(0.01)
        self.kill()
        return None


def _death(status: int | None, limits: ExtractLimits) -> str:
    """Why a worker stopped in the middle of an item, in one line."""
    if status is None:
        return "extraction process stopped responding"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        if -status == signal.SIGXCPU:
            return f"timed out after {limits.timeout_s:g} s of CPU time"
        if -status == signal.SIGKILL:  # not ours: the kernel's OOM killer, most likely
            return f"extraction process was killed (SIGKILL; memory limit {limits.memory_mib} MiB)"
        return f"extraction process crashed ({name})"
    return f"extraction process exited unexpectedly (status {status})"


_POOLS: weakref.WeakSet[ExtractPool] = weakref.WeakSet()
_current: contextvars.ContextVar[ExtractPool | None] = contextvars.ContextVar(
    "extract_pool", default=None
)


class ExtractPool:
    """Up to `size` extraction worker processes (default: one per CPU); see the module doc.

    `handler` ("package.module:function", called as function(key, data, limits) in the
    worker) replaces extract_text there: a hook for tests and for other extractors.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        idle_s: float = 60.0,
        start_timeout_s: float = 60.0,
        handler: str | None = None,
    ) -> None:
        self._size = max(1, size or os.cpu_count() or 1)
        self.idle_s = idle_s
        self.start_timeout_s = start_timeout_s
        self.handler = handler
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._dying: list[_Worker] = []  # killed, not reaped yet
        self._starting = 0
        self._generation = 0  # close() bumps it: older busy workers stop when released
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]
        self._waiters = collections.deque()
        self._sweeper: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
        self._tokens: list[contextvars.Token[ExtractPool | None]] = []
        _POOLS.add(self)

    @property
    def size(self) -> int:
        return self._size

    def resize(self, size: int) -> None:
        """Run at most `size` workers from now on (extra idle ones stop at once)."""
        with self._lock:
            self._size = max(1, size)
            while self._idle and len(self._idle) + len(self._busy) > self._size:
                self._retire(self._idle.pop(0))
            self._wake_one()

    def pids(self) -> list[int]:
        """The worker processes that exist (running, or not reaped yet)."""
        with self._lock:
            self._reap()
            return [w.pid for w in (*self._idle, *self._busy, *self._dying)]

    async def extract(self, key: str, data: bytes, limits: ExtractLimits | None = None) -> str:
        """extract_text(key, data, limits) in a worker; ExtractError also when the worker runs
        out of time or memory or crashes, RagError if no worker could be started."""
        limits = limits or DEFAULT_LIMITS
        check_extractable(key, data)  # no worker needed to refuse a type or an empty file
        payload = pickle.dumps((key, data, limits), protocol=5)
        worker = await self._acquire()
        reusable = False
        try:
            kind, value, retire = await self._exchange(worker, payload, limits)
            reusable = not retire
        finally:
            self._release(worker, reusable)
        if kind == "ok":
            text: str = value
            return text
        if kind == "notext":
            raise NoTextError(value)
        if kind == "error":
            raise ExtractError(value)
        if kind == "memory":
            raise ExtractError(f"ran out of memory (limit {limits.memory_mib} MiB)")
        if kind == "rag":
            raise RagError(value)
        if isinstance(value, Exception):
            raise value  # a bug in the extractor, confined to this item by the caller
        raise RagError(f"internal error while extracting: {value!r:.100}")

    async def _exchange(
        self, worker: _Worker, payload: bytes, limits: ExtractLimits
    ) -> tuple[str, Any, bool]:
        try:
            async with asyncio.timeout(limits.timeout_s):
                await _send(worker.wfd, payload)
                kind, value, retire = await _receive(worker.rfd)
        except TimeoutError:
            worker.kill()
            raise ExtractError(f"timed out after {limits.timeout_s:g} s") from None
        except (OSError, EOFError, _ProtocolError):
            status = await worker.exit_status()
            worker.kill()
            raise ExtractError(_death(status, limits)) from None
        except BaseException:  # cancelled: the worker is in an unknown state
            worker.kill()
            raise
        return str(kind), value, bool(retire)

    # -- workers ---------------------------------------------------------------------------

    async def _acquire(self) -> _Worker:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                self._reap()
                worker = self._pop_idle()
                if worker is not None:
                    self._busy.add(worker)
                    return worker
                start = len(self._busy) + self._starting < self._size
                if start:
                    self._starting += 1
                else:
                    turn: asyncio.Future[None] = loop.create_future()
                    self._waiters.append((loop, turn))
            if start:
                return await self._start()
            try:
                await turn
            except asyncio.CancelledError:
                with self._lock:
                    try:
                        self._waiters.remove((loop, turn))
                    except ValueError:  # woken already: hand the turn on
                        self._wake_one()
                raise

    async def _start(self) -> _Worker:
        """A new worker, ready for an item (counted in `_starting` until then)."""
        worker: _Worker | None = None
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            # Not asyncio's subprocesses: those belong to one event loop, and this pool's workers
            # outlive loops (one per test, asyncio.run in the CLI). Popen takes milliseconds.
            proc = subprocess.Popen(  # noqa: ASYNC220
                [
                    sys.executable,
                    "-P",
                    "-c",
                    _BOOT,
                    repr(2 * self.idle_s + 5),
                    self.handler or "",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
                start_new_session=True,  # the terminal's Ctrl-C goes to the parent alone
            )
            worker = _Worker(proc, self._generation)
            async with asyncio.timeout(self.start_timeout_s):
                hello = await _receive(worker.rfd)
            if not (isinstance(hello, tuple) and hello[:1] == ("ready",)):
                raise _ProtocolError(f"unexpected greeting {hello!r:.60}")
        except BaseException as exc:
            status = await worker.exit_status(1.0) if isinstance(exc, EOFError) and worker else None
            with self._lock:
                self._starting -= 1
                if worker is not None:
                    self._retire(worker)
                self._wake_one()
            if isinstance(exc, Exception):
                why = f"exit status {status}" if status is not None else _short(exc)
                raise RagError(f"could not start an extraction process ({why})") from exc
            raise
        with self._lock:
            self._starting -= 1
            self._busy.add(worker)
        return worker

    def _release(self, worker: _Worker, reusable: bool) -> None:
        with self._lock:
            self._busy.discard(worker)
            if (
                reusable
                and worker.generation == self._generation
                and len(self._idle) + len(self._busy) + self._starting < self._size
                and worker.alive()
            ):
                worker.last_used = time.monotonic()
                self._idle.append(worker)
            else:
                self._retire(worker)
            self._wake_one()
            self._schedule_sweep()

    def _pop_idle(self) -> _Worker | None:
        now = time.monotonic()
        while self._idle:
            worker = self._idle.pop()  # the most recently used: the others may go idle
            if worker.alive() and now - worker.last_used < self.idle_s:
                return worker
            self._retire(worker)
        return None

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        if not worker.reaped():
            self._dying.append(worker)

    def _reap(self) -> None:
        self._dying = [w for w in self._dying if not w.reaped()]

    def _wake_one(self) -> None:
        while self._waiters:
            loop, turn = self._waiters.popleft()
            with contextlib.suppress(RuntimeError):  # that loop is closed: try the next
                loop.call_soon_threadsafe(_resolve, turn)
                return

    def _schedule_sweep(self) -> None:
        """Stop idle workers after `idle_s`, on the loop that used the pool last."""
        if self._sweeper is not None and not self._sweeper[0].is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            self._sweeper = (loop, loop.call_later(self.idle_s, self._sweep))

    def _sweep(self) -> None:
        with self._lock:
            self._sweeper = None
            now = time.monotonic()
            for worker in [w for w in self._idle if now - w.last_used >= self.idle_s]:
                self._idle.remove(worker)
                self._retire(worker)
            self._reap()
            if self._idle or self._dying:
                self._schedule_sweep()

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the idle workers now (and wait for them), the busy ones when their items end.
        The pool stays usable: it starts new workers if asked for more items."""
        with self._lock:
            self._generation += 1
            for worker in self._idle:
                self._retire(worker)
            self._idle.clear()
            if self._sweeper is not None:
                with contextlib.suppress(RuntimeError):
                    self._sweeper[1].cancel()
                self._sweeper = None
            self._dying = [w for w in self._dying if not w.reaped(1.0)]

    def terminate(self) -> None:
        """Kill every worker, busy or not (at interpreter exit)."""
        with self._lock:
            self._generation += 1
            for worker in (*self._idle, *self._busy):
                self._retire(worker)
            self._idle.clear()
            self._dying = [w for w in self._dying if not w.reaped(1.0)]

    async def __aenter__(self) -> ExtractPool:
        """Make this the pool `extract_isolated` uses in this task (and tasks it starts)."""
        self._tokens.append(_current.set(self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(ValueError, IndexError):
            _current.reset(self._tokens.pop())
        self.close()


def _resolve(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:120]


_default: ExtractPool | None = None
_default_lock = threading.Lock()


def default_pool(limits: ExtractLimits | None = None) -> ExtractPool:
    """The shared pool, sized by `limits.workers` when given (default: one per CPU)."""
    global _default
    size = (limits or DEFAULT_LIMITS).pool_size
    with _default_lock:
        if _default is None:
            _default = ExtractPool(size)
        elif limits is not None and _default.size != size:
            _default.resize(size)
        return _default


def close_default_pool() -> None:
    """Stop the shared pool's workers (a later item starts new ones)."""
    with _default_lock:
        if _default is not None:
            _default.close()


async def extract_isolated(
    key: str, data: bytes, limits: ExtractLimits | None = None, *, pool: ExtractPool | None = None
) -> str:
    """The document's text, extracted in a worker process under `limits` (see ExtractLimits);
    by `pool`, else the innermost `async with ExtractPool(...)`, else the shared pool."""
    chosen = pool or _current.get() or default_pool(limits)
    return await chosen.extract(key, data, limits)


@atexit.register
def _terminate_all() -> None:
    for pool in list(_POOLS):
        with contextlib.suppress(Exception):
            pool.terminate()
