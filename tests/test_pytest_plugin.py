"""greenback_loop's pytest plugin (greenback_loop.pytest_plugin), each run in
a pytest subprocess of its own: a user's test suite whose async tests and
fixtures call a synchronous layer that uses ``await_``.

The ``pytest11`` entry point is exercised through a stand-in distribution
(``entry_point`` fixture), so the tests do not depend on how greenback_loop
itself was installed. These tests pick the portal core of each subprocess
themselves, so they run once (not again in the twin rerun).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_asyncio.plugin

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.once

INI = """\
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
filterwarnings = error
{extra}
"""

#: A user's suite in strict mode: a synchronous layer under test, called from
#: async tests, their tasks and async fixtures of each loop scope.
STRICT_SUITE = """\
import asyncio

import pytest
import pytest_asyncio
import pytest_asyncio.plugin

import greenback_loop
{imports}

EXPECTED = {expected}


def sync_layer(value):
    return greenback_loop.await_(asyncio.sleep(0, value))


def running_loop_type():
    return type(asyncio.get_running_loop())


@pytest_asyncio.fixture
async def resource():
    value = sync_layer("set up")
    yield value
    assert sync_layer("torn down") == "torn down"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_resource():
    return sync_layer("module"), asyncio.get_running_loop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def session_resource():
    return sync_layer("session"), asyncio.get_running_loop()


@pytest.mark.asyncio
async def test_in_the_test():
    assert running_loop_type() is EXPECTED
    assert sync_layer(42) == 42


@pytest.mark.asyncio
async def test_in_its_tasks():
    async def child(i):
        return sync_layer(i)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(child(i)) for i in range(3)]
    assert [t.result() for t in tasks] == [0, 1, 2]
    assert await asyncio.gather(child(3), child(4)) == [3, 4]


@pytest.mark.asyncio
async def test_function_fixture(resource):
    assert resource == "set up"


@pytest.mark.asyncio(loop_scope="module")
async def test_module_loop(module_resource):
    value, loop = module_resource
    assert value == "module" and loop is asyncio.get_running_loop()
    assert type(loop) is EXPECTED


@pytest.mark.asyncio(loop_scope="session")
async def test_session_loop(session_resource):
    value, loop = session_resource
    assert value == "session" and loop is asyncio.get_running_loop()
    assert type(loop) is EXPECTED


@pytest_asyncio.fixture(scope="class", loop_scope="class")
async def class_resource():
    return sync_layer("class"), asyncio.get_running_loop()


@pytest.mark.asyncio(loop_scope="class")
class TestClassLoop:
    async def test_first(self, class_resource):
        assert class_resource == ("class", asyncio.get_running_loop())

    async def test_second(self, class_resource):
        assert class_resource == ("class", asyncio.get_running_loop())
        assert sync_layer(5) == 5


def test_sync_test_with_async_fixture(resource):
    assert resource == "set up"


@pytest.mark.skipif(
    not hasattr(pytest_asyncio.plugin, "PytestAsyncioSpecs"),
    reason="before pytest-asyncio 1.4, the policy of a live runner of wider scope is in effect",
)
def test_own_loop_of_a_sync_test_is_left_alone():
    async def main():
        return running_loop_type()

    assert not issubclass(asyncio.run(main()), greenback_loop.EventLoop)
"""

ASYNCIO = {"imports": "", "expected": "greenback_loop.EventLoop"}
UVLOOP = {"imports": "import greenback_loop.uvloop", "expected": "greenback_loop.uvloop.Loop"}

#: The same kind of suite in auto mode: no markers, plain pytest fixtures.
AUTO_SUITE = """\
import asyncio

import pytest

import greenback_loop


def sync_layer(value):
    return greenback_loop.await_(asyncio.sleep(0, value))


@pytest.fixture
async def resource():
    yield sync_layer("set up")
    sync_layer("torn down")


async def test_in_the_test(resource):
    assert type(asyncio.get_running_loop()) is greenback_loop.EventLoop
    assert (sync_layer(1), resource) == (1, "set up")


class TestInAClass:
    async def test_method(self, resource):
        assert sync_layer(resource) == "set up"
"""

#: One test, for the ways of enabling the plugin.
SMALL_SUITE = """\
import asyncio

import pytest

import greenback_loop


@pytest.mark.asyncio
async def test_sync_layer():
    assert type(asyncio.get_running_loop()) is greenback_loop.EventLoop
    assert greenback_loop.await_(asyncio.sleep(0, 7)) == 7
"""

#: A plain asyncio suite that knows nothing of greenback_loop.
PLAIN_SUITE = """\
import asyncio

import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def value():
    await asyncio.sleep(0)
    return 3


@pytest.mark.asyncio
async def test_plain_loop(value, request):
    loop = asyncio.get_running_loop()
    assert type(loop).__module__.startswith("asyncio.") and value == 3
    hook = getattr(request.config.hook, "pytest_asyncio_loop_factories", None)
    assert hook is None or not hook.get_hookimpls()
    assert request.config.pluginmanager.get_plugin("greenback_loop.pytest_plugin.active") is None


@pytest.mark.asyncio
@pytest.mark.parametrize("n", [1, 2])
async def test_parametrized(n):
    assert await asyncio.sleep(0, n) == n


def test_sync():
    pass
"""

#: pytest-asyncio 1.4+ has the loop factories hook, which the plugin
#: implements; before, the plugin overrides the event_loop_policy fixture.
HAS_LOOP_FACTORIES_HOOK = hasattr(pytest_asyncio.plugin, "PytestAsyncioSpecs")
needs_hook = pytest.mark.skipif(
    not HAS_LOOP_FACTORIES_HOOK, reason="pytest-asyncio 1.4+ (pytest_asyncio_loop_factories)"
)

#: What the strict suite reports with the plugin.
STRICT_OUTCOMES = {"passed": 9} if HAS_LOOP_FACTORIES_HOOK else {"passed": 8, "skipped": 1}

HEADER = "greenback_loop: pytest-asyncio's loops are {loop} (core {core}; *; enabled by {reason})"


@pytest.fixture
def entry_point(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install the plugin's ``pytest11`` entry point, as greenback_loop's
    metadata declares it, in a stand-in distribution on the subprocesses'
    path; pytest's plugin autoloading stays on."""
    site = pytester.mkdir("site")
    info = site / "greenback_loop_entry_point-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: greenback_loop_entry_point\nVersion: 0\n"
    )
    (info / "entry_points.txt").write_text(
        "[pytest11]\ngreenback_loop = greenback_loop.pytest_plugin:entry_point\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(site), prepend=os.pathsep)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return site


@pytest.fixture(autouse=True)
def _c_core_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENBACK_LOOP_NO_EXTENSIONS", raising=False)


def suite(
    pytester: pytest.Pytester, text: str, *, mode: str = "strict", extra_ini: str = ""
) -> None:
    pytester.makefile(".ini", pytest=INI.format(mode=mode, extra=extra_ini))
    pytester.makepyfile(test_suite=text)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v", *args, timeout=60)


def test_strict_mode_enabled_by_loading_the_module(pytester: pytest.Pytester) -> None:
    suite(pytester, STRICT_SUITE.format(**ASYNCIO))
    result = run(pytester, "-p", "greenback_loop.pytest_plugin")
    result.assert_outcomes(**STRICT_OUTCOMES)
    # one loop factory: the test IDs are those of a run without the plugin
    result.stdout.fnmatch_lines(["test_suite.py::test_in_the_test PASSED*"])
    result.stdout.fnmatch_lines(
        [
            HEADER.format(
                loop="greenback_loop.EventLoop",
                core="c",
                reason="loading greenback_loop.pytest_plugin",
            )
        ]
    )


def test_without_the_plugin_await_fails_clearly(pytester: pytest.Pytester) -> None:
    suite(pytester, STRICT_SUITE.format(**ASYNCIO))
    result = run(pytester)
    # All fail but the check of a sync test's own asyncio.run() (skipped
    # before pytest-asyncio 1.4).
    own_loop = {"passed": 1} if HAS_LOOP_FACTORIES_HOOK else {"skipped": 1}
    result.assert_outcomes(failed=2, errors=6, **own_loop)
    result.stdout.fnmatch_lines(
        ["*RuntimeError: greenback_loop.await_() was called in task *, which has no portal*"]
    )
    result.stdout.no_fnmatch_line("greenback_loop: *")


def test_auto_mode(pytester: pytest.Pytester, entry_point: Path) -> None:
    suite(pytester, AUTO_SUITE, mode="auto")
    run(pytester, "--greenback-loop").assert_outcomes(passed=2)


def test_uvloop(pytester: pytest.Pytester, entry_point: Path) -> None:
    suite(pytester, STRICT_SUITE.format(**UVLOOP), extra_ini="greenback_loop_uvloop = true")
    result = run(pytester)
    result.assert_outcomes(**STRICT_OUTCOMES)
    result.stdout.fnmatch_lines(
        [
            HEADER.format(
                loop="greenback_loop.uvloop.Loop",
                core="c",
                reason="the ini option greenback_loop_uvloop = true",
            )
        ]
    )


def test_pure_python_core(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENBACK_LOOP_NO_EXTENSIONS", "1")
    suite(pytester, STRICT_SUITE.format(**ASYNCIO))
    result = run(pytester, "-p", "greenback_loop.pytest_plugin")
    result.assert_outcomes(**STRICT_OUTCOMES)
    result.stdout.fnmatch_lines(["greenback_loop: * (core python; *"])


WHOLE_MODULE = "loading greenback_loop.pytest_plugin"


@pytest.mark.parametrize(
    ("way", "reason"),
    [
        (["-p", "greenback_loop"], "-p greenback_loop"),
        # the module and the entry point are both registered in these three
        (["-p", "greenback_loop.pytest_plugin"], WHOLE_MODULE),
        ({"conftest": 'pytest_plugins = ["greenback_loop.pytest_plugin"]'}, WHOLE_MODULE),
        ({"env": "greenback_loop.pytest_plugin"}, WHOLE_MODULE),
        (["--greenback-loop"], "--greenback-loop"),
        ({"ini": "greenback_loop = true"}, "the ini option greenback_loop = true"),
    ],
    ids=["p-entry-point", "p-module", "conftest", "env", "flag", "ini"],
)
def test_ways_to_enable(
    pytester: pytest.Pytester,
    entry_point: Path,
    monkeypatch: pytest.MonkeyPatch,
    way: list[str] | dict[str, str],
    reason: str,
) -> None:
    args = way if isinstance(way, list) else []
    where = way if isinstance(way, dict) else {}
    suite(pytester, SMALL_SUITE, extra_ini=where.get("ini", ""))
    if "conftest" in where:
        pytester.makeconftest(where["conftest"])
    if "env" in where:
        monkeypatch.setenv("PYTEST_PLUGINS", where["env"])
    result = run(pytester, *args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [HEADER.format(loop="greenback_loop.EventLoop", core="*", reason=reason)]
    )


def test_entry_point_by_name_without_autoloading(
    pytester: pytest.Pytester, entry_point: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    suite(pytester, SMALL_SUITE)
    run(pytester, "-p", "asyncio", "-p", "greenback_loop").assert_outcomes(passed=1)


def test_inert_unless_enabled(pytester: pytest.Pytester, entry_point: Path) -> None:
    suite(pytester, PLAIN_SUITE, extra_ini="asyncio_default_test_loop_scope = function")
    pytester.makeconftest(
        """\
        def pytest_report_header(config):
            return f"--greenback-loop: {config.getoption('greenback_loop', 'undeclared')}"
        """
    )
    loaded = run(pytester)
    blocked = run(pytester, "-p", "no:greenback_loop")

    def report(result: pytest.RunResult) -> list[str]:
        return [line for line in result.outlines if "::" in line]

    loaded.assert_outcomes(passed=4)
    loaded.stdout.fnmatch_lines(["plugins: *greenback_loop_entry_point-0*"])
    assert report(loaded) == report(blocked)
    loaded.stdout.no_fnmatch_line("greenback_loop: *")
    # the options are declared all the same
    loaded.stdout.fnmatch_lines(["--greenback-loop: False"])
    blocked.stdout.fnmatch_lines(["--greenback-loop: undeclared"])


@needs_hook
def test_own_loop_factories_hook_wins(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """\
        import asyncio

        import pytest


        @pytest.mark.asyncio
        async def test_loop():
            assert type(asyncio.get_running_loop()) is asyncio.SelectorEventLoop
        """,
    )
    pytester.makeconftest(
        """\
        import asyncio


        def pytest_asyncio_loop_factories(config, item):
            return {"mine": asyncio.SelectorEventLoop}
        """
    )
    run(pytester, "-p", "greenback_loop.pytest_plugin").assert_outcomes(passed=1)


@needs_hook
def test_overridden_policy_fixture_is_refused(pytester: pytest.Pytester) -> None:
    suite(pytester, SMALL_SUITE)
    pytester.makeconftest(
        """\
        import asyncio

        import pytest


        @pytest.fixture(scope="session")
        def event_loop_policy():
            return asyncio.get_event_loop_policy()
        """
    )
    result = run(pytester, "-p", "greenback_loop.pytest_plugin")
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        [
            "*test_suite.py::test_sync_layer: the event_loop_policy fixture is overridden "
            "(by conftest.event_loop_policy), but greenback_loop's pytest plugin*"
            "from a pytest_asyncio_loop_factories hook*"
        ]
    )


@pytest.mark.skipif(
    HAS_LOOP_FACTORIES_HOOK, reason="before pytest-asyncio 1.4 (event_loop_policy fixture)"
)
def test_own_policy_fixture_wins_before_loop_factories(pytester: pytest.Pytester) -> None:
    suite(
        pytester,
        """\
        import asyncio

        import pytest


        @pytest.mark.asyncio
        async def test_loop():
            assert type(asyncio.get_running_loop()).__module__.startswith("asyncio.")
        """,
    )
    pytester.makeconftest(
        """\
        import asyncio

        import pytest


        @pytest.fixture(scope="session")
        def event_loop_policy():
            return asyncio.DefaultEventLoopPolicy()
        """
    )
    run(pytester, "-p", "greenback_loop.pytest_plugin").assert_outcomes(passed=1)


def test_needs_pytest_asyncio(pytester: pytest.Pytester, entry_point: Path) -> None:
    suite(pytester, SMALL_SUITE)
    result = run(pytester, "-p", "no:asyncio", "--greenback-loop")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: greenback_loop's pytest plugin (enabled by --greenback-loop) runs "
            "pytest-asyncio's async tests and fixtures on greenback_loop's loops, but "
            "pytest-asyncio is not loaded*"
        ]
    )


def test_uvloop_option_needs_uvloop(pytester: pytest.Pytester, entry_point: Path) -> None:
    suite(pytester, SMALL_SUITE)
    pytester.makepyfile(uvloop='raise ImportError("no uvloop here")')
    result = run(pytester, "--greenback-loop-uvloop")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: greenback_loop's pytest plugin (enabled by --greenback-loop-uvloop): "
            "the uvloop option needs uvloop.*"
        ]
    )
