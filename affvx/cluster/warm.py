"""Warm starts: a fork server that imports the job code once and forks every job from it.

Every job is its own process, and a fresh interpreter pays for importing torch -- and the
compiler stack that the first optimizer imports lazily -- before it trains: seconds, more
than a small job's training. A `WarmStarter` starts one server process that imports the
given modules once (calling each one's `warm_up()`, if it has one), then forks a child for
every command `python -m MODULE ARGS...` of those modules. The child runs MODULE as
`python -m` would, with the command's argv (also in /proc/PID/cmdline), environment, working
directory, stdout and stderr; in a session of its own, with STOP_SIGNALS blocked (the job
unblocks them once it can checkpoint), SIGTERM when its parent dies, and optionally pinned
to CPUs -- what the local backend gives the children it starts itself.

    starter = WarmStarter(["affvx.orchestrator.worker"])
    process = starter.start(command, cwd=run, env=env, stdout=out, stderr=err, cpus=[0, 1])
    process.wait()          # a WarmProcess, or a subprocess.Popen where it could not fork
    starter.close()

Any other command -- another interpreter, interpreter options, a module not preloaded, an
environment that differs from the server's in a variable read when the interpreter or a
native library starts (PYTHON*, LD_*, OMP_*, ...), a working directory that would shadow an
imported module -- and every command once the server is gone, runs as a plain
subprocess.Popen with the same settings: callers use `start` unconditionally.

The server never initialises CUDA or starts a thread pool (a forked child would inherit
them broken), hands none of its descriptors to a child, and exits when its client goes away
(its children then get SIGTERM, as the local backend's children do when it dies).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from affvx.protocol import EXIT_FAILED, block_stop_signals

# variables read when the interpreter or a native library starts: a child forked from a
# server started under other values would not behave as a fresh process
STARTUP_VARIABLE_PREFIXES = (
    "PYTHON",
    "LD_",
    "LANG",
    "LC_",
    "OMP_",
    "GOMP_",
    "KMP_",
    "MKL_",
    "OPENBLAS_",
    "MALLOC_",
    "JE_",
    "ARROW_",
    "TORCH",
    "PYTORCH_",
    "TMPDIR",  # tempfile keeps the directory it found first
    "TEMP",
    "TMP",
)
START_TIMEOUT_S = 300.0  # the first start waits for the server's imports
_EXIT_REPORT_WAIT_S = 1.0  # a child has exited: the server's report of it is on its way
_WAIT_SLICE_S = 0.2  # a wait looks again this often whether the job ended unreported
_MESSAGE_BYTES = 1 << 20
_COMMAND_LINE_ROOM = " " * 4096  # argv space a child's command line is written into
_PR_SET_PDEATHSIG = 1
_SERVER_MODULE = "affvx.cluster.warm"

Stream = IO[Any] | int


class WarmStarter:
    """Starts job commands as forks of one warm server (see the module docstring).

    Contract: `start()` returns an object with Popen's `pid`, `args`, `returncode`, `poll()`,
    `wait(timeout)` (subprocess.TimeoutExpired), `send_signal()`, `terminate()` and
    `kill()`; a job killed by a signal has returncode -signal. The first start waits until
    the server has imported its modules. `close()` ends the server (children still running
    get SIGTERM). One lock guards the server's socket, so threads may share a starter.
    """

    def __init__(self, modules: Sequence[str], *, python: str = sys.executable) -> None:
        self.modules = tuple(modules)
        self.python = python
        self._exits: dict[int, int] = {}  # pid -> wait status, reported by the server
        self.last_refusal = ""  # why the server last refused to fork a command
        self._lock = threading.RLock()
        client_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with server_end:
            self._server = subprocess.Popen(
                [python, "-m", _SERVER_MODULE, str(server_end.fileno()), *self.modules]
                + [_COMMAND_LINE_ROOM],
                pass_fds=[server_end.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C at the terminal is for the client
            )
        self._socket: socket.socket | None = client_end

    @classmethod
    def for_command(cls, command: Sequence[str]) -> WarmStarter | None:
        """A starter whose server preloads the module of `command` (`PYTHON -m MODULE ...`,
        with that interpreter); None for any other command, which it could not fork."""
        if len(command) < 3 or command[1] != "-m":
            return None
        return cls([command[2]], python=command[0])

    @property
    def alive(self) -> bool:
        return self._socket is not None

    def forks(self, command: Sequence[str]) -> bool:
        """Whether `command` is one this starter's server can fork (its interpreter, `-m`, a
        module it preloaded) while the server lives; the environment is checked per start."""
        return (
            self.alive
            and len(command) >= 3
            and command[0] == self.python
            and command[1] == "-m"
            and command[2] in self.modules
        )

    def start(
        self,
        command: Sequence[str],
        *,
        cwd: str | os.PathLike[str],
        env: Mapping[str, str],
        stdout: Stream,
        stderr: Stream,
        cpus: Sequence[int] | None = None,
    ) -> WarmProcess | subprocess.Popen[bytes]:
        """Start `command` forked from the server, else as a plain process."""
        command = [os.fspath(part) for part in command]
        if self.forks(command) and _is_open(stdout) and _is_open(stderr):
            process = self._fork(command, cwd, env, stdout, stderr, cpus)
            if process is not None:
                return process
        return start_plain(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr, cpus=cpus)

    def close(self) -> None:
        """End the server: it exits when its socket closes."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
        try:
            self._server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()

    def __enter__(self) -> WarmStarter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- talking to the server ----------------------------------------------------------------

    def _fork(
        self,
        command: list[str],
        cwd: str | os.PathLike[str],
        env: Mapping[str, str],
        stdout: Stream,
        stderr: Stream,
        cpus: Sequence[int] | None,
    ) -> WarmProcess | None:
        request = {
            "argv": command,
            "cwd": os.path.abspath(cwd),
            "env": {os.fsdecode(k): os.fsdecode(v) for k, v in env.items()},
            "cpus": None if cpus is None else list(cpus),
        }
        with self._lock:
            if self._socket is None:
                return None
            try:
                socket.send_fds(
                    self._socket, [json.dumps(request).encode()], [_fd(stdout), _fd(stderr)]
                )
                reply = self._reply(START_TIMEOUT_S)
            except OSError:
                reply = None
            if reply is None:
                self._server_lost()
                return None
        if "started" not in reply:
            self.last_refusal = str(reply.get("refused", ""))
            return None
        return WarmProcess(self, int(reply["started"]), command)

    def _reply(self, timeout_s: float) -> dict[str, Any] | None:
        """The server's answer to a start request (exit reports met on the way are kept)."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = self._receive(deadline - time.monotonic())
            if message is None:
                return None
            if "exited" not in message:
                return message

    def _receive(self, timeout_s: float) -> dict[str, Any] | None:
        """One message, within `timeout_s` (None: none came, or the server is gone)."""
        sock = self._socket
        if sock is None or timeout_s < 0:
            return None
        ready, _, _ = select.select([sock], [], [], timeout_s)
        if not ready:
            return None
        data = sock.recv(_MESSAGE_BYTES)
        if not data:
            self._server_lost()
            return None
        message = json.loads(data)
        if "exited" in message:
            self._exits[int(message["exited"])] = int(message["status"])
        return message

    def _server_lost(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
        with contextlib.suppress(OSError):
            self._server.kill()
        self._server.wait()

    def _exit_status(self, process: WarmProcess, wait_s: float) -> int | None:
        """The wait status of `process` as the server reports it, waiting up to `wait_s`
        (None: still running). One that ended unreported -- the server died -- counts as
        failed (EXIT_FAILED): its own files say how it really ended."""
        deadline = time.monotonic() + wait_s
        reported_soon = False
        with self._lock:
            while process.pid not in self._exits:
                if self._socket is None:
                    return None if process.running() else EXIT_FAILED << 8
                if self._receive(max(deadline - time.monotonic(), 0.0)) is not None:
                    continue
                if time.monotonic() < deadline:
                    continue
                if reported_soon or process.running():
                    return None
                reported_soon = True  # it has exited: the server's report is on its way
                deadline = time.monotonic() + _EXIT_REPORT_WAIT_S
            return self._exits.pop(process.pid)


class WarmProcess:
    """A job forked by a WarmStarter's server, used as a subprocess.Popen (see WarmStarter).

    Signals go through a pidfd where the kernel has them, so a signal never reaches a
    process that took the pid of a job that has ended.
    """

    def __init__(self, starter: WarmStarter, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._starter = starter
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = None

    def poll(self) -> int | None:
        return self._wait_s(0.0)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            slice_s = _WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            code = self._wait_s(min(slice_s, _WAIT_SLICE_S))
            if code is not None:
                return code
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def running(self) -> bool:
        """Whether the process has not exited yet (whoever reaps it)."""
        if self._pidfd is not None:
            return not select.select([self._pidfd], [], [], 0)[0]
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return _process_state(self.pid) not in ("Z", "X", "")

    def _wait_s(self, wait_s: float) -> int | None:
        if self.returncode is None:
            status = self._starter._exit_status(self, max(wait_s, 0.0))
            if status is not None:
                self.returncode = os.waitstatus_to_exitcode(status)
                if self._pidfd is not None:
                    os.close(self._pidfd)
                    self._pidfd = None
        return self.returncode

    def __del__(self) -> None:
        if getattr(self, "_pidfd", None) is not None:
            os.close(self._pidfd)  # type: ignore[arg-type]


def _fd(stream: Stream) -> int:
    return stream if isinstance(stream, int) else stream.fileno()


def _is_open(stream: Stream) -> bool:
    """A real open descriptor (not subprocess.DEVNULL, PIPE or None), which a fork can get."""
    try:
        os.fstat(_fd(stream))
    except (AttributeError, OSError, ValueError, TypeError):
        return False
    return True


def _process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def start_plain(
    command: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str],
    stdout: Stream,
    stderr: Stream,
    cpus: Sequence[int] | None = None,
) -> subprocess.Popen[bytes]:
    """`command` as a fresh process set up as a forked job is: its own session, stop
    signals blocked, SIGTERM when its parent dies, pinned to `cpus` if given."""
    return subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=_plain_child_setup(cpus),
    )


def _plain_child_setup(cpus: Sequence[int] | None) -> Callable[[], None]:
    """What a plain child does before exec: what a forked child gets in `_Job.enter`."""
    parent = os.getpid()

    def setup() -> None:
        block_stop_signals()
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        _die_with_parent(parent)

    return setup


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


# -- the server ---------------------------------------------------------------------------------


@dataclass
class _Job:
    """One start request, in the forked child: what it must become."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    cpus: list[int] | None
    stdout: int = -1
    stderr: int = -1
    server_pid: int = 0
    ready: int = -1  # written and closed once the child is set up, as Popen's exec does
    set_by_imports: dict[str, str] = field(default_factory=dict)

    @property
    def module(self) -> str:
        return self.argv[2]

    def enter(self) -> None:
        """Turn this forked child into `python -m MODULE ARGS` (before running MODULE)."""
        os.setsid()
        _die_with_parent(self.server_pid)
        block_stop_signals()
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)
        devnull = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((devnull, 0), (self.stdout, 1), (self.stderr, 2)):
            os.dup2(fd, target)
        for fd in {devnull, self.stdout, self.stderr} - {0, 1, 2}:
            os.close(fd)
        os.chdir(self.cwd)
        os.environ.clear()
        os.environ.update(self.env)
        for name, value in self.set_by_imports.items():  # as the job's own imports would
            os.environ.setdefault(name, value)
        if not sys.flags.safe_path:
            sys.path[0] = os.getcwd()  # where `python -m` puts the working directory
        sys.argv = ["-m", *self.argv[3:]]  # runpy puts the module's path first, as -m does
        sys.orig_argv = list(self.argv)
        _write_command_line(self.argv)
        os.close(self.ready)
        sys.modules.pop(self.module, None)  # run afresh as __main__, as -m does
        if "numpy" in sys.modules:  # a fresh process seeds it from the OS (random reseeds itself)
            sys.modules["numpy"].random.seed()


class _Server:
    """Answers start requests on `sock` until the client goes away."""

    def __init__(
        self, sock: socket.socket, modules: tuple[str, ...], environ: dict[str, str]
    ) -> None:
        self.sock = sock
        self.modules = modules
        self.environ = environ  # before the imports, which may add variables (torch does)
        self.set_by_imports = {k: v for k, v in os.environ.items() if environ.get(k) != v}
        self.path_entry = sys.path[0] if sys.path else ""
        self.command_line_room = _command_line_room()
        self.children: dict[int, int | None] = {}  # pid -> pidfd
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ)

    def serve(self) -> _Job | None:
        """None once the client is gone; in a forked child, the job it must run."""
        while True:
            polled = any(fd is None for fd in self.children.values())
            for key, _ in self.selector.select(0.05 if polled else None):
                if key.fileobj is self.sock:
                    try:
                        message, fds, _, _ = socket.recv_fds(self.sock, _MESSAGE_BYTES, 2)
                    except ConnectionError:
                        message, fds = b"", []
                    if not message:
                        return None
                    forked = self._start(json.loads(message), fds)
                    if forked is not None:
                        return forked
                else:
                    self._reap(int(key.data))
            if polled:
                for pid in [p for p, fd in self.children.items() if fd is None]:
                    self._reap(pid, block=False)

    def _start(self, request: dict[str, Any], fds: list[int]) -> _Job | None:
        job = _Job(request["argv"], request["cwd"], request["env"], request["cpus"], *fds[:2])
        job.set_by_imports = self.set_by_imports
        refusal = self._refusal(job) if len(fds) == 2 else "no stdout and stderr given"
        if refusal:
            for fd in fds:
                os.close(fd)
            self._send({"refused": refusal})
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        job.server_pid = os.getpid()
        ready, job.ready = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready)
            self._close_for_child()
            return job
        for fd in (*fds, job.ready):
            os.close(fd)
        os.read(ready, 1)  # EOF once the child is in its own session, its files in place
        os.close(ready)
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):  # an old kernel: poll with waitpid
            pidfd = None
        self.children[pid] = pidfd
        if pidfd is not None:
            self.selector.register(pidfd, selectors.EVENT_READ, pid)
        self._send({"started": pid})
        return None

    def _refusal(self, job: _Job) -> str:
        """Why `job` cannot be forked from this server ("" if it can)."""
        if job.argv[:2] != [sys.executable, "-m"] or job.module not in self.modules:
            return f"not `{sys.executable} -m` of {', '.join(self.modules)}"
        for name in {*self.environ, *job.env}:
            if name.startswith(STARTUP_VARIABLE_PREFIXES) and (
                self.environ.get(name) != job.env.get(name)
            ):
                return f"{name} differs from the server's"
        if threading.active_count() > 1:
            return "the server runs threads"
        if len(b"\0".join(map(os.fsencode, job.argv))) >= self.command_line_room:
            return "the command line is too long"
        return self._shadowing(job.cwd)

    def _shadowing(self, cwd: str) -> str:
        """A fresh `python -m` in `cwd` would import from it first: refuse when it holds a
        module of the same name as one this server has imported."""
        if sys.flags.safe_path or os.path.realpath(cwd) == os.path.realpath(self.path_entry):
            return ""
        try:
            names = {entry.split(".")[0] for entry in os.listdir(cwd)}
        except OSError as error:
            return f"cannot list {cwd}: {error.strerror}"
        shadowed = sorted(names & {name.split(".")[0] for name in sys.modules})
        return f"{cwd} holds {shadowed[0]}, a module the server imported" if shadowed else ""

    def _reap(self, pid: int, block: bool = True) -> None:
        waited, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        if waited == 0:
            return
        pidfd = self.children.pop(pid)
        if pidfd is not None:
            self.selector.unregister(pidfd)
            os.close(pidfd)
        self._send({"exited": pid, "status": status})

    def _send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the client is gone: the next read says so
            self.sock.send(json.dumps(message).encode())

    def _close_for_child(self) -> None:
        self.selector.close()
        for pidfd in self.children.values():
            if pidfd is not None:
                os.close(pidfd)
        self.sock.close()


def _command_line_room() -> int:
    """Bytes of this process's argv area (/proc/self/stat arg_start, arg_end), 0 if unknown."""
    start, end = _argv_area()
    return end - start


def _argv_area() -> tuple[int, int]:
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5)
    except (OSError, IndexError, ValueError):
        return 0, 0


def _write_command_line(argv: list[str]) -> None:
    """Show `argv` in /proc/self/cmdline (ps, and a newer attempt looking for this job's
    worker) by writing it over the server's own argv, which has room for it."""
    start, end = _argv_area()
    text = b"\0".join(map(os.fsencode, argv)) + b"\0"
    if start and len(text) <= end - start:
        ctypes.memmove(start, text, len(text))
        ctypes.memset(start + len(text), 0, end - start - len(text))


def _preload(modules: tuple[str, ...]) -> None:
    for name in modules:
        warm_up = getattr(importlib.import_module(name), "warm_up", None)
        if callable(warm_up):
            warm_up()
    # children's garbage collections then leave the preloaded objects' pages shared
    gc.freeze()


def main(args: list[str]) -> _Job | None:
    sock = socket.socket(fileno=int(args[0]))
    modules = tuple(arg for arg in args[1:] if arg.strip())
    environ = dict(os.environ)
    try:
        _preload(modules)
    except Exception as error:
        sys.stderr.write(f"affvx warm starter: {type(error).__name__}: {error}; jobs start cold\n")
        return None
    return _Server(sock, modules, environ).serve()


if __name__ == "__main__":
    job = main(sys.argv[1:])
    if job is not None:  # in a forked child: become `python -m MODULE ARGS`
        import runpy

        job.enter()
        runpy.run_module(job.module, run_name="__main__", alter_sys=True)
