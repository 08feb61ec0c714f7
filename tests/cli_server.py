"""A `relreward` process kept warm for the tests: it imports what a command imports (torch, Hydra, the stages, the
Maze2D family) once, then forks one child per command, which runs ``relreward_cli.cli.main`` as a fresh process
would and exits with its code. A command costs its own work instead of 1.5 s of imports more.

Protocol, one JSON line each way on the descriptors given as arguments: a request ``{"args", "cwd", "env",
"stdout", "stderr"}`` (the two output paths are files the child writes); the replies ``{"pid": ...}`` when the child
started and ``{"returncode": ...}`` when it ended (negative: killed by that signal, as :mod:`subprocess` says).
The test side (``conftest.run_cli``) starts it again when a test has changed the environment, so nothing read from
the environment at import time differs from a fresh process's.
"""

import atexit
import importlib
import json
import os
import pkgutil
import sys
import threading

sys.path.pop(0)  # this file's folder (tests/): a command's process does not see it

from relreward_cli import cli, stages  # noqa: E402

for _module in pkgutil.iter_modules(stages.__path__):
    importlib.import_module(f"{stages.__name__}.{_module.name}")
importlib.import_module("relreward_cli.families.maze2d")


def _exit_code(code: object) -> int:
    """The exit status the interpreter gives ``SystemExit(code)``; it prints a code that is not an integer."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def _run_command(request: dict) -> None:
    """In the forked child: become the command's process, run it, and exit as the interpreter would (never returns).
    The exit runs the ``atexit`` handlers and flushes the output, and skips tearing down the modules, which costs a
    fresh process half a second and changes nothing it wrote."""
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY | os.O_CREAT),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["relreward", *request["args"]]
    try:
        code = _exit_code(cli.main(request["args"]))
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except BaseException:  # as an uncaught exception ends a process: its traceback, exit status 1
        sys.excepthook(*sys.exc_info())
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(requests_fd: int, replies_fd: int) -> None:
    requests, replies = os.fdopen(requests_fd, "r"), os.fdopen(replies_fd, "w")
    for line in requests:
        request = json.loads(line)
        if threading.active_count() != 1:  # a fork would copy another thread's locks
            raise RuntimeError("the warm CLI process started a thread")
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            _run_command(request)
        print(json.dumps({"pid": pid}), file=replies, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=replies, flush=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
