"""Real ASGI servers, end to end: an app whose request handlers call a
synchronous layer that uses ``await_``, served by uvicorn (its CLI,
``uvicorn.run()`` and ``uvicorn.Server.serve()``), by gunicorn with uvicorn's
worker, and by gunicorn's own ASGI worker, on greenback_loop's asyncio and
uvloop loops.

Each case starts the server in a child process on 127.0.0.1 (port 0: the
server picks a free one and logs it), sends a bounded number of HTTP
requests with the standard library's client (four of them at once, each
parked in ``await_`` until all four are), checks every response, then stops
the server with a signal and checks that it shut down cleanly. The child's
core is chosen by its environment (the twin with
GREENBACK_LOOP_NO_EXTENSIONS=1), so these tests cover both cores themselves
and are marked ``once``. docs/servers.rst shows the same commands.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.once,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX servers and signals"),
]

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0  # seconds for a server to log its address
REQUEST_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
TOGETHER = 4  # requests parked in await_ at the same time

# -- what the user writes -----------------------------------------------------

#: The application: an ASGI app over a synchronous layer that reaches an
#: async "database driver" through greenback_loop.await_, at startup, in
#: every request and at shutdown.
APP = '''\
import asyncio
import json
import os
import traceback
from urllib.parse import parse_qs

import greenback_loop


class FakeDatabase:
    """An async driver, as asyncpg or aiosqlite would be."""

    def __init__(self):
        self.queries = 0
        self.barriers = {}

    async def connect(self):
        await asyncio.sleep(0.001)
        return self

    async def fetch_user(self, user_id):
        await asyncio.sleep(0.005)
        self.queries += 1
        return {"id": user_id, "name": f"user-{user_id}"}

    async def wait_for_others(self, group, parties):
        """Return once *parties* requests of *group* wait here at once."""
        barrier = self.barriers.setdefault(group, asyncio.Barrier(parties))
        async with asyncio.timeout(10):
            await barrier.wait()

    async def close(self):
        await asyncio.sleep(0.001)


DB = None


# -- the synchronous layer: plain functions, no async, no await --


def open_database():
    return greenback_loop.await_(FakeDatabase().connect())


def load_user(user_id, group, parties):
    greenback_loop.await_(asyncio.sleep(0))
    if DB is None:
        raise RuntimeError("the lifespan startup did not open the database")
    if parties:
        greenback_loop.await_(DB.wait_for_others(group, parties))
    user = greenback_loop.await_(DB.fetch_user(user_id))
    loop = asyncio.get_running_loop()
    return {
        "user": user,
        "loop_mro": [f"{c.__module__}.{c.__qualname__}" for c in type(loop).__mro__],
        "core": greenback_loop.implementation,
        "portal": greenback_loop.has_portal(),
        "pid": os.getpid(),
    }


def close_database():
    greenback_loop.await_(DB.close())
    print(f"app: database closed after {DB.queries} queries", flush=True)


# -- the ASGI app --


async def app(scope, receive, send):
    global DB
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                DB = open_database()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                close_database()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode())
    try:
        result = load_user(
            int(query["id"][0]), query.get("group", [""])[0], int(query.get("parties", ["0"])[0])
        )
        status = 200
    except Exception:
        result, status = {"error": traceback.format_exc()}, 500
    body = json.dumps(result).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
'''

#: gunicorn worker classes: uvicorn's worker on greenback_loop's loops
#: (docs/servers.rst).
WORKERS = """\
from uvicorn_worker import UvicornWorker


class GreenbackWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "greenback_loop:new_event_loop"}


class GreenbackUVLoopWorker(UvicornWorker):
    CONFIG_KWARGS = {"loop": "greenback_loop.uvloop:new_event_loop"}
"""

#: uvicorn.run(), with the loop factory by name (uvicorn 0.36+).
UVICORN_RUN = """\
import sys

import uvicorn

uvicorn.run("app:app", host="127.0.0.1", port=0, loop=sys.argv[1])
"""

#: uvicorn.Server.serve() under greenback_loop.run(): any uvicorn version.
SERVER_SERVE = """\
import contextlib
import sys

import uvicorn

import greenback_loop

server = uvicorn.Server(uvicorn.Config("app:app", host="127.0.0.1", port=0))
with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, as uvicorn.run() does
    greenback_loop.run(server.serve(), uvloop=sys.argv[1] == "uvloop")
"""

#: A gunicorn config file for gunicorn's own ASGI worker (--asgi-loop
#: asyncio makes its loop with asyncio.new_event_loop(), so the policy's).
ASGI_WORKER_CONFIG = """\
import asyncio

import greenback_loop

asyncio.set_event_loop_policy(greenback_loop.GreenbackPolicy(uvloop={uvloop}))
"""

LOOP_FACTORIES = {
    "asyncio": "greenback_loop:new_event_loop",
    "uvloop": "greenback_loop.uvloop:new_event_loop",
}
WORKER_CLASSES = {
    "asyncio": "greenback_workers.GreenbackWorker",
    "uvloop": "greenback_workers.GreenbackUVLoopWorker",
}
EXPECTED_LOOPS = {
    "asyncio": ("greenback_loop._loop.EventLoop", "asyncio.base_events.BaseEventLoop"),
    "uvloop": ("greenback_loop.uvloop.Loop", "uvloop.Loop"),
}


# -- fixtures and helpers -----------------------------------------------------


def need_uvicorn() -> None:
    """Skip unless uvicorn can take a loop factory by name (0.36+)."""
    pytest.importorskip("uvicorn", minversion="0.36", reason="needs uvicorn 0.36+")


def need_gunicorn() -> Any:
    """Skip unless gunicorn is installed; return the module."""
    return pytest.importorskip("gunicorn", minversion="21.2", reason="needs gunicorn 21.2+")


def need_uvicorn_worker() -> None:
    """Skip unless gunicorn, uvicorn and the uvicorn-worker package are installed."""
    need_gunicorn()
    need_uvicorn()
    pytest.importorskip("uvicorn_worker", minversion="0.4", reason="needs uvicorn-worker 0.4+")


@pytest.fixture(params=["c", "python"])
def core(request: pytest.FixtureRequest) -> str:
    """The portal core of the server process."""
    if request.param == "c" and platform.python_implementation() != "CPython":
        pytest.skip("the C core is CPython's")
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    """The flavour of the server's greenback_loop loop."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """The server's working directory, holding the app module."""
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def child_env(core: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GREENBACK_LOOP_NO_EXTENSIONS", None)
    if core == "python":
        env["GREENBACK_LOOP_NO_EXTENSIONS"] = "1"
    # this checkout's greenback_loop, as in the test process
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return (
            f"--- stdout\n{self.stdout.read_text(errors='replace')}"
            f"--- stderr\n{self.stderr.read_text(errors='replace')}"
        )


ADDRESS = re.compile(r"http://127\.0\.0\.1:(\d+)\s")  # the whole number: a whole line


@pytest.fixture
def start(app_dir: Path) -> Iterator[Any]:
    """``start(*args, core=...)``: run ``python *args`` in *app_dir*, in a
    session of its own, and return a :class:`Server` once it has logged its
    address. Whatever is still running at teardown is killed."""
    started: list[Server] = []

    def start(*args: str, core: str) -> Server:
        n = len(started)
        stdout, stderr = app_dir / f"stdout{n}.txt", app_dir / f"stderr{n}.txt"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=app_dir,
                env=child_env(core),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        server = Server(proc, 0, stdout, stderr)
        started.append(server)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while (match := ADDRESS.search(stderr.read_text(errors="replace"))) is None:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}\n{server.output()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the server logged no address in {STARTUP_TIMEOUT} s\n{server.output()}"
                )
            time.sleep(0.05)
        server.port = int(match.group(1))
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


def wait_for_log(server: Server, line: str, count: int) -> None:
    """Wait until the server's stderr has *line* *count* times."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while server.stderr.read_text(errors="replace").count(line) < count:
        if server.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the server did not log {line!r} {count} times\n{server.output()}")
        time.sleep(0.05)


def get(conn: http.client.HTTPConnection, path: str, server: Server) -> dict[str, Any]:
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read().decode()
    assert response.status == 200, f"GET {path}: {response.status}\n{body}\n{server.output()}"
    return json.loads(body)  # type: ignore[no-any-return]


def check_response(result: dict[str, Any], user_id: int, loop: str, core: str) -> None:
    assert result["user"] == {"id": user_id, "name": f"user-{user_id}"}
    own_class, base_class = EXPECTED_LOOPS[loop]
    assert result["loop_mro"][0] == own_class, result["loop_mro"]
    assert base_class in result["loop_mro"], result["loop_mro"]
    if loop == "asyncio":
        assert "uvloop.Loop" not in result["loop_mro"]
    assert result["core"] == core
    assert result["portal"] is True


def exercise(server: Server, loop: str, core: str, *, together: int = TOGETHER) -> set[int]:
    """Send the requests and check every response; return the pids that
    served them.

    Three requests in turn on one kept-alive connection, then *together*
    requests at once, each on its own connection: each one's synchronous
    layer parks in ``await_`` until all of them wait there, which they can
    only do if the server goes on running other tasks meanwhile.
    """
    pids = set()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
    try:
        for user_id in range(1, 4):
            result = get(conn, f"/user?id={user_id}", server)
            check_response(result, user_id, loop, core)
            pids.add(result["pid"])
    finally:
        conn.close()

    def meet(user_id: int) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
        try:
            return get(conn, f"/user?id={user_id}&group=meet&parties={together}", server)
        finally:
            conn.close()

    ids = range(10, 10 + together)
    with ThreadPoolExecutor(together) as pool:
        results = list(pool.map(meet, ids))
    for user_id, result in zip(ids, results, strict=True):
        check_response(result, user_id, loop, core)
        pids.add(result["pid"])
    return pids


ERROR_LOG = re.compile(r"^(ERROR|CRITICAL):|\[(ERROR|CRITICAL)\]", re.MULTILINE)
# gunicorn before 24 logs a worker that uvicorn ended by re-raising the
# stopping signal (see UVICORN_RC) at ERROR, whatever the loop
GUNICORN_WORKER_STOPPED = re.compile(
    r"^.*\[ERROR\] Worker \(pid:\d+\) was sent SIG(TERM|INT)!$", re.MULTILINE
)


def stop(server: Server, sig: signal.Signals, *, expected_rc: int, group: bool = False) -> str:
    """Send *sig* to the server (to its whole process group, as Ctrl-C in a
    terminal does, with *group*), wait for it, and check it exited with
    *expected_rc*, logged no error and no traceback, and closed the
    database in its lifespan shutdown. Returns its stdout."""
    if group:
        os.killpg(server.proc.pid, sig)
    else:
        server.proc.send_signal(sig)
    try:
        rc = server.proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop in {STOP_TIMEOUT} s\n{server.output()}")
    stderr = server.stderr.read_text(errors="replace")
    assert rc == expected_rc, server.output()
    assert "Traceback" not in stderr, server.output()
    assert ERROR_LOG.search(GUNICORN_WORKER_STOPPED.sub("", stderr)) is None, server.output()
    assert "lifespan' protocol appears unsupported" not in stderr, server.output()
    stdout = server.stdout.read_text(errors="replace")
    assert "app: database closed after" in stdout, server.output()
    return stdout


# uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal
# again with its default action (since 0.29): SIGINT ends uvicorn.run() and
# the CLI with 0, SIGTERM ends the process by the signal.
UVICORN_RC = {signal.SIGINT: 0, signal.SIGTERM: -signal.SIGTERM}


# -- uvicorn ------------------------------------------------------------------


# each loop with each core, each pair stopped by one of the two signals
LOOPS_CORES_SIGNALS = pytest.mark.parametrize(
    ("loop", "core", "sig"),
    [
        ("asyncio", "c", signal.SIGTERM),
        ("asyncio", "python", signal.SIGINT),
        ("uvloop", "c", signal.SIGINT),
        ("uvloop", "python", signal.SIGTERM),
    ],
    indirect=["loop", "core"],
    ids=lambda value: value.name if isinstance(value, signal.Signals) else value,
)


@LOOPS_CORES_SIGNALS
def test_uvicorn_cli(start: Any, loop: str, core: str, sig: signal.Signals) -> None:
    need_uvicorn()
    server = start(
        "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "0",
        "--loop", LOOP_FACTORIES[loop],
        core=core,
    )  # fmt: skip
    assert exercise(server, loop, core) == {server.proc.pid}
    stop(server, sig, expected_rc=UVICORN_RC[sig])


def test_uvicorn_cli_httptools(start: Any, loop: str) -> None:
    """uvicorn's httptools protocol (``--http auto`` picks it when installed,
    as with ``pip install uvicorn[standard]``)."""
    need_uvicorn()
    pytest.importorskip("httptools", reason="httptools is not installed")
    server = start(
        "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "0",
        "--loop", LOOP_FACTORIES[loop], "--http", "httptools",
        core="c",
    )  # fmt: skip
    assert exercise(server, loop, "c") == {server.proc.pid}
    stop(server, signal.SIGINT, expected_rc=0)


def test_uvicorn_run(start: Any, app_dir: Path, loop: str) -> None:
    need_uvicorn()
    (app_dir / "serve.py").write_text(UVICORN_RUN)
    server = start("serve.py", LOOP_FACTORIES[loop], core="c")
    assert exercise(server, loop, "c") == {server.proc.pid}
    stop(server, signal.SIGINT, expected_rc=0)


def test_uvicorn_server_serve(start: Any, app_dir: Path, loop: str) -> None:
    pytest.importorskip("uvicorn", reason="needs uvicorn")  # any version
    (app_dir / "serve.py").write_text(SERVER_SERVE)
    server = start("serve.py", loop, core="c")
    assert exercise(server, loop, "c") == {server.proc.pid}
    stop(server, signal.SIGINT, expected_rc=0)


# -- gunicorn -----------------------------------------------------------------


def gunicorn_args(*args: str) -> list[str]:
    # gunicorn 25.1+ opens a control socket under $HOME by default
    extra = ["--no-control-socket"] if need_gunicorn().version_info >= (25, 1) else []
    return ["-m", "gunicorn", "--bind", "127.0.0.1:0", "--graceful-timeout", "10", *extra, *args]


@LOOPS_CORES_SIGNALS
def test_gunicorn_uvicorn_worker(
    start: Any, app_dir: Path, loop: str, core: str, sig: signal.Signals
) -> None:
    """SIGTERM goes to the master (gunicorn's graceful stop), SIGINT to the
    whole process group, as Ctrl-C in a terminal sends it. (SIGINT to the
    master alone makes it send SIGQUIT to the workers, which uvicorn's worker
    only heeds at gunicorn's graceful timeout, whatever the loop.)"""
    need_uvicorn_worker()
    (app_dir / "greenback_workers.py").write_text(WORKERS)
    server = start(
        *gunicorn_args("--workers", "1", "-k", WORKER_CLASSES[loop], "app:app"), core=core
    )
    (pid,) = exercise(server, loop, core)
    assert pid != server.proc.pid  # a worker, forked from the master
    stop(server, sig, expected_rc=0, group=sig == signal.SIGINT)


def test_gunicorn_uvicorn_workers_preloaded(start: Any, app_dir: Path) -> None:
    """Two workers forked from a master that imported the app, and with it
    greenback_loop, before forking (--preload)."""
    need_uvicorn_worker()
    (app_dir / "greenback_workers.py").write_text(WORKERS)
    args = gunicorn_args("--workers", "2", "--preload", "-k", WORKER_CLASSES["asyncio"], "app:app")
    server = start(*args, core="c")
    wait_for_log(server, "Application startup complete.", 2)  # both workers, before the stop
    pids = set()
    for _ in range(3):  # the workers share the connections: no request waits for another
        pids |= exercise(server, "asyncio", "c", together=1)
    assert server.proc.pid not in pids
    stdout = stop(server, signal.SIGTERM, expected_rc=0)
    assert stdout.count("app: database closed after") == 2, stdout


def test_gunicorn_asgi_worker(start: Any, app_dir: Path, loop: str, core: str) -> None:
    """gunicorn's own ASGI worker (gunicorn 24+), with --asgi-loop asyncio and
    greenback_loop's policy set in the config file."""
    if need_gunicorn().version_info < (24,):
        pytest.skip("gunicorn's ASGI worker needs gunicorn 24+")
    if sys.version_info >= (3, 16):
        pytest.skip("asyncio has no event loop policies from Python 3.16")
    config = app_dir / "gunicorn_conf.py"
    config.write_text(ASGI_WORKER_CONFIG.format(uvloop=loop == "uvloop"))
    args = gunicorn_args(
        "-c", str(config), "--workers", "1", "-k", "asgi", "--asgi-loop", "asyncio"
    )
    server = start(*args, "app:app", core=core)
    (pid,) = exercise(server, loop, core)
    assert pid != server.proc.pid
    stop(server, signal.SIGTERM, expected_rc=0)
