"""A pytest plugin that runs pytest-asyncio's tests and fixtures on greenback_loop's loops.

Enabled, every async test and async fixture that pytest-asyncio runs gets a
loop from :func:`greenback_loop.new_event_loop`, so synchronous code called
from any task of it can use :func:`greenback_loop.await_`::

    pytest -p greenback_loop.pytest_plugin    # greenback_loop.EventLoop
    pytest --greenback-loop-uvloop            # greenback_loop.uvloop.Loop (entry point)

The plugin is opt-in. Its ``pytest11`` entry point (named ``greenback_loop``)
is loaded by every pytest run in an environment where greenback_loop is
installed, but all it does then is declare its options; nothing changes
until one of these enables it:

- loading the module explicitly: ``-p greenback_loop.pytest_plugin``,
  ``pytest_plugins = ["greenback_loop.pytest_plugin"]`` in the root
  conftest.py, or ``PYTEST_PLUGINS=greenback_loop.pytest_plugin``;
- ``-p greenback_loop`` (the entry point's name);
- ``--greenback-loop`` or ``--greenback-loop-uvloop`` on the command line;
- ``greenback_loop = true`` or ``greenback_loop_uvloop = true`` in the ini
  file (``[tool.pytest.ini_options]`` of pyproject.toml, pytest.ini, ...).

The uvloop options choose :class:`greenback_loop.uvloop.Loop` instead of
:class:`greenback_loop.EventLoop`.

How the loops reach pytest-asyncio: from pytest-asyncio 1.4, through its
``pytest_asyncio_loop_factories`` hook, implemented last (``trylast``), so a
hook implementation of the project's own wins; with pytest-asyncio 1.0 to
1.3, by overriding its ``event_loop_policy`` fixture with a
``GreenbackPolicy``, which a conftest's own ``event_loop_policy`` fixture
overrides in turn. See docs/pytest.rst.

(PYTEST_DONT_REWRITE: the entry point may have imported this module before
pytest is asked to load it by name, as a conftest's ``pytest_plugins`` does;
it has no assertions to rewrite.)
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from functools import partial
from types import ModuleType
from typing import Any

import pytest

__all__ = ["entry_point"]

#: The name of the ``pytest11`` entry point (``-p greenback_loop``).
ENTRY_POINT_NAME = "greenback_loop"
#: The name under which the enabled part is registered with pytest.
ACTIVE_PLUGIN_NAME = "greenback_loop.pytest_plugin.active"

_MIN_PYTEST_ASYNCIO = (1, 0)
_LOOP_FACTORIES_HOOK = "pytest_asyncio_loop_factories"
_PYTEST_ASYNCIO_PLUGIN = "pytest_asyncio.plugin"


# -- options ------------------------------------------------------------------


def _add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("greenback_loop", "greenback_loop (portals in pytest-asyncio's tasks)")
    group.addoption(
        "--greenback-loop",
        action="store_true",
        default=False,
        dest="greenback_loop",
        help="run pytest-asyncio's async tests and fixtures on greenback_loop's asyncio loop, "
        "so that sync code in them can call greenback_loop.await_()",
    )
    group.addoption(
        "--greenback-loop-uvloop",
        action="store_true",
        default=False,
        dest="greenback_loop_uvloop",
        help="the same on greenback_loop's uvloop loop (greenback_loop.uvloop.Loop)",
    )
    parser.addini(
        "greenback_loop",
        type="bool",
        default=False,
        help="run pytest-asyncio's async tests and fixtures on greenback_loop's asyncio loop",
    )
    parser.addini(
        "greenback_loop_uvloop",
        type="bool",
        default=False,
        help="run pytest-asyncio's async tests and fixtures on greenback_loop's uvloop loop",
    )


def _this_module() -> ModuleType:
    return sys.modules[__name__]


def _enabled_by(config: pytest.Config, *, loaded_explicitly: bool) -> str | None:
    """What enabled the plugin, for messages, or None if nothing did."""
    if loaded_explicitly:
        return f"loading {__name__}"
    if ENTRY_POINT_NAME in (p.strip() for p in config.getoption("plugins", None) or ()):
        return f"-p {ENTRY_POINT_NAME}"
    for option in ("greenback_loop_uvloop", "greenback_loop"):
        if config.getoption(option, False):
            return "--" + option.replace("_", "-")
        if config.getini(option):
            return f"the ini option {option} = true"
    return None


def _configure(config: pytest.Config, *, loaded_explicitly: bool) -> None:
    reason = _enabled_by(config, loaded_explicitly=loaded_explicitly)
    if reason is None or config.pluginmanager.get_plugin(ACTIVE_PLUGIN_NAME) is not None:
        return
    use_uvloop = bool(
        config.getoption("greenback_loop_uvloop", False) or config.getini("greenback_loop_uvloop")
    )
    config.pluginmanager.register(_active_plugin(config, reason, use_uvloop), ACTIVE_PLUGIN_NAME)


# -- the module itself, as loaded by -p greenback_loop.pytest_plugin -----------
#
# The entry point loads `entry_point`, not this module: pytest would refuse to
# register one module under two names (the entry point's and the module's),
# which is what `-p greenback_loop.pytest_plugin` does when the entry point is
# installed. Whichever of the two is registered first declares the options;
# loading the module enables the plugin.


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if not pluginmanager.is_registered(entry_point):
        _add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    _configure(config, loaded_explicitly=True)


class EntryPoint:
    """What greenback_loop's ``pytest11`` entry point loads: the options, and
    the plugin enabled only when they (or ``-p greenback_loop``) ask for it."""

    def pytest_addoption(
        self, parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager
    ) -> None:
        if not pluginmanager.is_registered(_this_module()):
            _add_options(parser)

    def pytest_configure(self, config: pytest.Config) -> None:
        if not config.pluginmanager.is_registered(_this_module()):
            _configure(config, loaded_explicitly=False)

    def __repr__(self) -> str:
        return f"<{__name__}.entry_point>"


entry_point = EntryPoint()


# -- the enabled part -----------------------------------------------------------


def _pytest_asyncio(config: pytest.Config, reason: str) -> ModuleType:
    """pytest-asyncio's plugin module, if it is registered and recent enough.

    Raises:
        pytest.UsageError: it is not, with what to do.
    """
    module = sys.modules.get(_PYTEST_ASYNCIO_PLUGIN)
    if module is None or not config.pluginmanager.is_registered(module):
        raise pytest.UsageError(
            f"greenback_loop's pytest plugin (enabled by {reason}) runs pytest-asyncio's "
            "async tests and fixtures on greenback_loop's loops, but pytest-asyncio is not "
            "loaded: pip install 'pytest-asyncio>=1.0' (and do not pass -p no:asyncio)"
        )
    import pytest_asyncio

    version = str(getattr(pytest_asyncio, "__version__", ""))
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is not None and (int(match[1]), int(match[2])) < _MIN_PYTEST_ASYNCIO:
        raise pytest.UsageError(
            f"greenback_loop's pytest plugin (enabled by {reason}) needs pytest-asyncio 1.0 "
            f"or later; pytest-asyncio {version} is installed: pip install -U pytest-asyncio"
        )
    return module


def _has_loop_factories_hook(config: pytest.Config) -> bool:
    caller = getattr(config.hook, _LOOP_FACTORIES_HOOK, None)
    return caller is not None and getattr(caller, "spec", None) is not None


_POLICY_OVERRIDDEN = (
    "{nodeid}: the event_loop_policy fixture is overridden (by {where}), but "
    "greenback_loop's pytest plugin (enabled by {reason}) gives pytest-asyncio a loop "
    "factory, and pytest-asyncio creates its loops from a factory, not from the policy. "
    "Remove the override to run on greenback_loop's loops, or return loop factories of "
    "your own from a pytest_asyncio_loop_factories hook: they take precedence over the "
    "plugin's."
)


def _overridden_policy_fixture(item: pytest.Item) -> str | None:
    """Where the ``event_loop_policy`` fixture that *item* uses comes from, if
    not from pytest-asyncio."""
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", {}).get("event_loop_policy")
    func = getattr(defs[-1], "func", None) if defs else None
    module = getattr(func, "__module__", None)
    if func is None or module == _PYTEST_ASYNCIO_PLUGIN:
        return None
    return f"{module}.{getattr(func, '__qualname__', 'event_loop_policy')}"


def _active_plugin(config: pytest.Config, reason: str, use_uvloop: bool) -> ModuleType:
    """The enabled plugin: a module object made here, registered with pytest
    (pytest reads fixtures of a plugin module, and deprecates session fixtures
    that are methods of a plugin object)."""
    pytest_asyncio = _pytest_asyncio(config, reason)
    from . import _impl
    from ._loop import new_event_loop, policy_class, uvloop_loop_class

    if use_uvloop:
        try:
            uvloop_loop_class()
        except ImportError as exc:
            raise pytest.UsageError(
                f"greenback_loop's pytest plugin (enabled by {reason}): the uvloop option "
                f"needs uvloop. {exc}"
            ) from exc
    factory = partial(new_event_loop, uvloop=use_uvloop)
    factories: Mapping[str, Callable[[], Any]] = {
        "greenback_loop_uvloop" if use_uvloop else "greenback_loop": factory
    }
    members: dict[str, object] = {}

    if _has_loop_factories_hook(config):
        # pytest-asyncio 1.4+: its hook, implemented last, so that one of the
        # project's own (which returns a mapping) wins.
        mechanism = "pytest_asyncio_loop_factories hook"

        @pytest.hookimpl(trylast=True)
        def pytest_asyncio_loop_factories(
            config: pytest.Config, item: pytest.Item
        ) -> Mapping[str, Callable[[], Any]]:
            where = _overridden_policy_fixture(item)
            if where is not None:
                pytest.fail(
                    _POLICY_OVERRIDDEN.format(nodeid=item.nodeid, where=where, reason=reason),
                    pytrace=False,
                )
            return factories

        members[_LOOP_FACTORIES_HOOK] = pytest_asyncio_loop_factories

        if hasattr(pytest_asyncio, "_asyncio_loop_factory"):
            # pytest-asyncio parametrizes this (private) fixture with the hook's
            # factories for its async tests only; an async fixture that a sync
            # test requests would run on its default loop (from the policy).
            @pytest.fixture(scope="session", name="_asyncio_loop_factory")
            def loop_factory_fixture(request: pytest.FixtureRequest) -> Callable[[], Any]:
                return getattr(request, "param", None) or factory

            members["_asyncio_loop_factory"] = loop_factory_fixture
    else:
        # pytest-asyncio 1.0 to 1.3: its event_loop_policy fixture, overridden
        # (a conftest's own override comes after a plugin's).
        mechanism = "event_loop_policy fixture"

        @pytest.fixture(scope="session", name="event_loop_policy")
        def event_loop_policy() -> Any:
            return policy_class()(uvloop=use_uvloop)

        members["event_loop_policy"] = event_loop_policy

    loop_name = "greenback_loop.uvloop.Loop" if use_uvloop else "greenback_loop.EventLoop"

    def pytest_report_header(config: pytest.Config) -> str:
        return (
            f"greenback_loop: pytest-asyncio's loops are {loop_name} (core "
            f"{_impl.implementation}; {mechanism}; enabled by {reason})"
        )

    members["pytest_report_header"] = pytest_report_header
    plugin = ModuleType(ACTIVE_PLUGIN_NAME, "greenback_loop's pytest plugin, enabled.")
    vars(plugin).update(members)
    return plugin
