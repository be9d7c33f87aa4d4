"""Runs commands as `python -m MODULE ...`, `python SCRIPT ...` or `python -c CODE` would, each
in a fresh process forked from this one, which has already imported the heavy libraries.

Each command still gets a process of its own (its own absl flags, module state, stdout,
stderr and exit status) but not ~3 s of imports. Nothing that defines absl flags at import is
imported here: a command's module is executed only in its child, as `__main__`.

Protocol (tests/test_doc_commands.py): one JSON request per line on stdin, {"argv": [...],
"cwd": ..., "env": {...}, "stdout": PATH, "stderr": PATH}; one JSON line back per request,
{"returncode": N}. Run as `python tests/_docs_support.py`.
"""

import atexit
import json
import os
import runpy
import signal
import sys
import traceback

PRELOAD = (  # what the documented commands import between them (not torch: none needs it)
    "numpy", "jax", "jax.numpy", "flax.linen", "optax", "orbax.checkpoint", "tensorflow_datasets",
    "tokenizers", "absl.app", "ml_collections.config_flags", "mlm_jax.training.run",
    "mlm_jax.sweep.execution",
)  # fmt: skip


def _run(argv: list[str]) -> int:
    """What `python *argv` runs, here; its exit status as the interpreter would give it."""
    try:
        if argv[0] == "-m":
            sys.argv, sys.path[0] = ["-m", *argv[2:]], os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv, sys.path[0] = ["-c", *argv[2:]], ""
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv, sys.path[0] = list(argv), os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - printed as the interpreter prints it
        traceback.print_exc()
        return 1
    return 0


def _child(request: dict) -> None:
    for fd, path in ((0, os.devnull), (1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(request["cwd"])
    os.environ.update(request["env"])
    signal.alarm(300)  # a command that hangs dies of SIGALRM: its status says so
    code = _run(request["argv"])
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a library printing while imported cannot garble the answers
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # (not tests/)
    for name in PRELOAD:
        __import__(name)
    answers.write("ready\n")
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve()
