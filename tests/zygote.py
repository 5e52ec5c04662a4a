"""A fork server for the suite's Python processes: `python tests/zygote.py SOCKET` imports what a rank
imports (torch, DeepSpeed, transformers' LLaMA, the trainer) once, then starts each requested process as
a fork of itself: a launch costs ~0.5 s instead of the ~9 s of CPU those imports take on the 2-core
machine, plus 1-4 s for the interpreter's exit, for each of the few hundred processes of a suite run
(docs/testing.md, "The fork server").

Protocol, one request per connection (see `start`): the client sends a JSON object {argv, env, cwd} with
its stdin, stdout and stderr as file descriptors (SCM_RIGHTS). The server forks a monitor, which forks the
process and sends back its pid as one line, then, when it ends, its exit status as a second line
(`os.waitstatus_to_exitcode`: -N for signal N). The process runs like `python -u SCRIPT ARGS` (or
`python -m MODULE ARGS`, `python -c CODE ARGS`, `python - ARGS`): its own argv, environment, working directory and sys.path[0],
and it exits as the interpreter does (threads joined, atexit handlers run, streams flushed) without the
final collection.

A request whose environment differs from the server's in a variable a library may read at import time
(anything but the launcher's rank variables and bigtrain's own, listed in RUNTIME_ENV) is refused, and
the client starts a fresh interpreter instead: a forked process must behave exactly as a fresh one.
One difference is left: what the preloaded imports print (DeepSpeed's accelerator warning) is printed
once, by the server, not by every process; no test reads import-time output.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import gc
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback

# read when a process runs, not when the preloaded modules were imported: may differ per request
RUNTIME_ENV = (
    *("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "CROSS_RANK", "CROSS_SIZE", "MASTER_ADDR", "MASTER_PORT"),
    *("PWD", "OLDPWD", "SHLVL", "_", "PYTEST_CURRENT_TEST"),  # the shell's and pytest's bookkeeping
    *("COLUMNS", "LINES"),  # the terminal's size, which pytest sets on a terminal; argparse reads it when it prints
    # set by libraries when the caller imported them (torch, its inductor, an OpenMP shim), not read at import
    *("PYTORCH_NVML_BASED_CUDA_CHECK", "KMP_DUPLICATE_LIB_OK"),
    "PYTHONUNBUFFERED",  # read when an interpreter starts; a fork's streams are unbuffered anyway
)
RUNTIME_PREFIXES = ("BIGTRAIN_", "SLURM_", "_TORCHINDUCTOR_")
PRELOAD = ("bigtrain.cli.train", "bigtrain.train.loop", "transformers.models.llama.modeling_llama", "peft")
ENV_VAR = "BIGTRAIN_TEST_ZYGOTE"
DECLARED_ENV = "BIGTRAIN_TEST_RUNTIME_ENV"  # "A,B": variables only the requested script reads, at run time


def runtime_key(key: str) -> bool:
    return key in RUNTIME_ENV or key.startswith(RUNTIME_PREFIXES)


def env_conflict(ours: dict[str, str], theirs: dict[str, str], allowed: frozenset[str] = frozenset()) -> str | None:
    """The first variable that differs and may have been read at import time (not a runtime key, not in
    `allowed`), or None."""
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key) and not runtime_key(key) and key not in allowed:
            return key
    return None


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds = b"", []
    while not data.endswith(b"\n"):
        msg, anc, _flags, _addr = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * array.array("i").itemsize))
        if not msg:
            raise ConnectionError("client went away")
        data += msg
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    return json.loads(data), fds


def _run_child(request: dict, fds: list[int], set_by_imports: dict[str, str]) -> None:
    """In the forked process: become `python ARGV...` and exit as it would."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**request["env"], **set_by_imports})
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(write_through=True)  # as `python -u`
    argv = request["argv"]
    code: object = 0
    try:
        if argv[0] == "-":  # `python - ARGS`: the script on stdin
            sys.argv = list(argv)
            sys.path[0] = ""
            main = {"__name__": "__main__", "__builtins__": __builtins__, "__file__": "<stdin>"}
            exec(compile(sys.stdin.read(), "<stdin>", "exec"), main)
        elif argv[0] == "-c":  # `python -c CODE ARGS`
            sys.argv = ["-c", *argv[2:]]
            sys.path[0] = ""
            main = {"__name__": "__main__", "__builtins__": __builtins__}
            exec(compile(argv[1], "<string>", "exec"), main)
        elif argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = request["cwd"]
            sys.modules.pop(argv[1], None)  # a preloaded module runs afresh as __main__, as `python -m` runs it
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code
    except BaseException:
        traceback.print_exc()
        code = 1
    _exit(code)


def _exit(code: object) -> None:
    """Exit as the interpreter does (threading's own exit hooks, which stop e.g. ThreadPoolExecutor's
    workers, then the non-daemon threads joined: `threading._shutdown`, as Py_FinalizeEx calls it; then
    the atexit handlers and the status sys.exit gives), minus its final collection of every object, which
    takes 1-4 s with these modules loaded."""
    threading._shutdown()
    atexit._run_exitfuncs()
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code or 0)


def _serve_one(conn: socket.socket, env: dict[str, str], set_by_imports: dict[str, str]) -> None:
    """In the monitor: start the process, report its pid and then its exit status."""
    try:
        request, fds = _recv_request(conn)
    except (ConnectionError, ValueError):
        os._exit(0)
    # what the imports set is what the process will have: a request that carries the same value (its
    # caller imported torch too) is no conflict
    theirs = {k: v for k, v in request["env"].items() if set_by_imports.get(k) != v}
    # and what the caller declares its script's own (a test's OUT, SCRATCH for the GPU session's dry run)
    declared = frozenset(k for k in request["env"].get(DECLARED_ENV, "").split(",") if k)
    conflict = env_conflict(env, theirs, declared)
    if conflict is not None:
        print(f"zygote: refused {request['argv'][:1]}: {conflict} differs", file=sys.stderr, flush=True)
        conn.sendall(json.dumps({"refused": conflict}).encode() + b"\n")
        os._exit(0)
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_child(request, fds, set_by_imports)
    for fd in fds:
        os.close(fd)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    ended = os.pidfd_open(pid)
    # the process ends, or its launcher does (killed, e.g. by a test's timeout): then the process is killed
    # too, so a killed launcher leaves nothing running
    if ended not in select.select([ended, conn], [], [])[0]:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
    os._exit(0)


def serve(path: str) -> None:
    import importlib

    env = dict(os.environ)  # what requests are compared with: the environment the imports saw
    for name in PRELOAD:
        importlib.import_module(name)
    # a fork has only the forking thread: a thread started by an import would be missing, its locks held
    threads = os.listdir("/proc/self/task")
    if len(threads) != 1:
        raise SystemExit(
            f"zygote: the imports started {len(threads) - 1} thread(s); not serving (forks would lack them)"
        )
    gc.freeze()  # the preloaded objects: never collected, so a fork's collections do not touch (copy) them
    # what the imports themselves set (torch: PYTORCH_NVML_BASED_CUDA_CHECK), as a fresh process would have it
    set_by_imports = {k: v for k, v in os.environ.items() if env.get(k) != v}
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        sys.stdout.flush(), sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _serve_one(conn, env, set_by_imports)
        conn.close()


class Forked:
    """The client's handle on a process the server started: pid, poll(), wait(), send_signal()."""

    def __init__(self, conn: socket.socket, pending: bytes, pid: int) -> None:
        self._conn, self._pending, self.pid = conn, pending, pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if b"\n" not in self._pending and not select.select([self._conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            line, _ = _read_line(self._conn, self._pending)
            self.returncode = json.loads(line)["exit"] if line else -signal.SIGKILL  # no status: the monitor died
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None and (b"\n" in self._pending or select.select([self._conn], [], [], 0)[0]):
            return self.wait()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _read_line(conn: socket.socket, pending: bytes) -> tuple[bytes, bytes]:
    """One line from `conn` (b"" at end of stream) and what was read after it."""
    while b"\n" not in pending:
        chunk = conn.recv(4096)
        if not chunk:
            return b"", b""
        pending += chunk
    line, rest = pending.split(b"\n", 1)
    return line + b"\n", rest


def start(argv: list[str], env: dict[str, str], cwd: str) -> Forked | None:
    """Start `python ARGV` through the server named by $BIGTRAIN_TEST_ZYGOTE with this process's stdin,
    stdout and stderr; None when there is no server or it refuses (the caller starts python itself)."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        request = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode() + b"\n"
        conn.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
        line, pending = _read_line(conn, b"")
        reply = json.loads(line or b"{}")
    except (OSError, ValueError):
        conn.close()
        return None
    if "pid" not in reply:
        conn.close()
        return None
    return Forked(conn, pending, reply["pid"])


if __name__ == "__main__":
    serve(sys.argv[1])
