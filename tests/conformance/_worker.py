"""Run one test_asyncio module in this process, under one mode, and write
what happened to a JSON-lines file. Started by ``run_test_asyncio.py``, one
process per module; not meant to be run by hand (but it can be:
``python tests/conformance/_worker.py --mode loop --module
test.test_asyncio.test_locks --results /tmp/r.jsonl``).

The bootstrap, in order, before the module is imported:

1. faulthandler on; a per-test ``dump_traceback_later(exit=True)`` turns a
   hang into a dead process the runner can attribute to the running test.
2. Recorders that must not change behaviour: ``sys.unraisablehook`` and
   ``threading.excepthook`` (record, then call the default hook, which
   prints as usual), a tee on ``sys.stderr`` that notes "Exception ignored"
   lines, a handler on the ``asyncio`` logger (records ERROR and above and
   prints WARNING and above, as logging's last-resort handler would), and
   the portal census (below).
3. The mode:

   ``plain``
      nothing: the baseline.
   ``loop``
      every event loop class test_asyncio runs tasks on becomes one of
      ours. ``asyncio.SelectorEventLoop`` (the name the tests and the default
      policy's ``_loop_factory`` use; on 3.13+ also ``asyncio.EventLoop``) is
      replaced by ``greenback_loop.EventLoop`` itself, and the default
      policy's ``_loop_factory`` points at it, so ``asyncio.new_event_loop()``,
      ``asyncio.run()``, ``asyncio.Runner()`` and direct
      ``asyncio.SelectorEventLoop(...)`` calls all make our loop (with its C
      ``create_task``). The other loop classes the tests instantiate or
      subclass -- ``test_utils.TestLoop`` (the virtual-clock loop most unit
      tests use), ``asyncio.BaseEventLoop`` (test_runners, test_pep492; the
      package's name only, as tests patch methods through
      ``asyncio.base_events.BaseEventLoop``) and
      ``proactor_events.BaseProactorEventLoop`` (test_proactor_events, with
      a mocked proactor) -- are replaced by ``PortalLoopMixin + cls`` under
      the same name, the documented way to give another loop class portals.
      ``BaseSelectorEventLoop`` is left alone, because test_events checks
      ``isinstance(loop, selector_events.BaseSelectorEventLoop)`` on our
      EventLoop, which derives from the original. Tasks constructed as
      ``asyncio.Task(coro, loop=...)`` get no portal (test_tasks does that a
      lot: it tests the Task classes, not loops); the census says how many
      tests that leaves with portals.
   ``policy``
      ``asyncio.set_event_loop_policy(greenback_loop.GreenbackPolicy())``;
      test_asyncio resets the policy (``set_event_loop_policy(None)``) in
      most ``tearDownModule``s and some tests, and test_events'
      PolicyTests leave an ``asyncio.DefaultEventLoopPolicy()`` installed,
      so before each test the policy is put back if it is None or exactly
      asyncio's default policy. Other policies a test installs stay.

Census: asyncio's C ``Task.__init__`` registers every new task by calling
``add`` on the weak set ``asyncio.tasks._all_tasks`` (3.11;
``_scheduled_tasks`` on 3.12 and 3.13). The instance's class is switched to a
subclass whose ``add`` counts the tasks whose coroutine is a Portal of the
selected core, per test, then adds as before. It runs after the task's
source traceback has been taken and adds no frame to any stack a test looks
at. On 3.14+ asyncio keeps tasks in a C list and there is no census.

Events written (one JSON object per line): ``collected`` (the test ids),
``start`` (a test began), ``test`` (its record), ``late`` (an unraisable or
log error after a test ended, attributed to it), ``module_skip``,
``module_error``, ``done``.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import logging
import re
import sys
import threading
import time
import traceback
import unittest
from collections.abc import Iterator
from typing import Any, TextIO

_OUTCOME_RANK = {"pass": 0, "skip": 1, "xfail": 2, "uxpass": 3, "fail": 4, "error": 5}


def normalize(text: str) -> str:
    """A key for comparing messages across runs: addresses, ids and counters
    (``Task-12``, line numbers) vary from run to run."""
    text = re.sub(r"0x[0-9a-fA-F]+", "0x?", text)
    text = re.sub(r"\d+", "N", text)
    return text[:300]


def _tail(text: str, limit: int = 3000) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def _safe_repr(obj: object) -> str:
    try:
        return repr(obj)
    except Exception as exc:  # a repr that fails is itself worth a look
        return f"<repr failed: {type(exc).__name__}>"


class Recorder:
    """Everything the hooks note, for the test that is running (or, between
    tests, for the one that ran last)."""

    def __init__(self, out: TextIO, portal_types: tuple[type, ...]) -> None:
        self.out = out
        self.portal_types = portal_types
        self.current: str | None = None
        self.last: str = "<module>"
        self.in_default_hook = False
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.unraisable: list[dict[str, str]] = []
        self.log_errors: list[dict[str, str]] = []
        self.tasks = 0
        self.portal_tasks = 0

    def emit(self, event: dict[str, Any]) -> None:
        try:
            with self.lock:
                self.out.write(json.dumps(event) + "\n")
                self.out.flush()
        except Exception:  # interpreter shutdown: nothing left to tell
            pass

    def begin(self, test_id: str) -> None:
        self.current = test_id
        self._reset()
        self.emit({"event": "start", "id": test_id})

    def end(self) -> dict[str, Any]:
        data = {
            "unraisable": self.unraisable,
            "log_errors": self.log_errors,
            "tasks": self.tasks,
            "portal_tasks": self.portal_tasks,
        }
        if self.current is not None:
            self.last = self.current
        self.current = None
        self._reset()
        return data

    def _note(self, kind: str, item: dict[str, str]) -> None:
        if self.current is not None:
            getattr(self, kind).append(item)
        else:
            self.emit({"event": "late", "id": self.last, kind: [item]})

    def note_unraisable(self, key: str, text: str) -> None:
        self._note("unraisable", {"key": normalize(key), "text": _tail(text)})

    def note_log_error(self, key: str, text: str) -> None:
        self._note("log_errors", {"key": normalize(key), "text": _tail(text)})

    def note_task(self, task: object) -> None:
        get_coro = getattr(task, "get_coro", None)
        coro = get_coro() if callable(get_coro) else None
        self.tasks += 1
        if self.portal_types and type(coro) in self.portal_types:
            self.portal_tasks += 1


# -- hooks -------------------------------------------------------------------


def install_unraisable_hooks(rec: Recorder) -> None:
    def unraisablehook(u: Any) -> None:
        exc_name = u.exc_type.__name__ if u.exc_type is not None else "?"
        msg = u.err_msg or "Exception ignored in"
        key = f"{exc_name}: {msg}: {_safe_repr(u.object)[:200]}"
        text = "".join(traceback.format_exception(u.exc_type, u.exc_value, u.exc_traceback))
        rec.note_unraisable(key, f"{msg}: {_safe_repr(u.object)}\n{text}")
        rec.in_default_hook = True
        try:
            sys.__unraisablehook__(u)
        finally:
            rec.in_default_hook = False

    default_excepthook = threading.excepthook

    def excepthook(args: Any) -> None:
        exc_name = args.exc_type.__name__ if args.exc_type is not None else "?"
        name = args.thread.name if args.thread is not None else "?"
        text = "".join(
            traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        )
        rec.note_unraisable(f"thread exception {exc_name} in {name}", text)
        rec.in_default_hook = True
        try:
            default_excepthook(args)
        finally:
            rec.in_default_hook = False

    sys.unraisablehook = unraisablehook
    threading.excepthook = excepthook


class StderrTee:
    """``sys.stderr`` as it was, noting "Exception ignored" text that did not
    come through the hooks above."""

    def __init__(self, stream: TextIO, rec: Recorder) -> None:
        self._stream = stream
        self._rec = rec

    def write(self, text: str) -> int:
        if "Exception ignored" in text and not self._rec.in_default_hook:
            self._rec.note_unraisable(f"stderr: {text.strip()[:200]}", text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class AsyncioLogRecorder(logging.Handler):
    """Records asyncio's ERROR+ log records; prints WARNING+ to the current
    ``sys.stderr`` just as logging's last-resort handler (which this handler's
    presence switches off) would."""

    def __init__(self, rec: Recorder) -> None:
        super().__init__(logging.WARNING)
        self._rec = rec

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            text = str(record.msg)
        if record.levelno >= logging.ERROR:
            self._rec.note_log_error(f"{record.levelname} {record.getMessage()[:200]}", text)
        try:
            sys.stderr.write(text + "\n")
        except Exception:
            pass


def install_census(rec: Recorder) -> bool:
    """Count new tasks (and those with portals) per test; see the module doc."""
    from asyncio import tasks

    registry = getattr(tasks, "_scheduled_tasks", None)
    if registry is None:
        registry = getattr(tasks, "_all_tasks", None)
    if registry is None or not hasattr(registry, "__dict__"):
        return False
    base = type(registry)

    class CensusWeakSet(base):  # type: ignore[valid-type,misc]
        def add(self, item: Any) -> None:
            try:
                rec.note_task(item)
            except Exception:  # a fake task in a test of the registry itself
                pass
            super().add(item)

    registry.__class__ = CensusWeakSet
    return True


# -- modes -------------------------------------------------------------------


def _with_portals(cls: type) -> Any:
    """``PortalLoopMixin + cls``, under *cls*'s own name (reprs name it)."""
    from greenback_loop._loop import PortalLoopMixin

    sub = type(cls.__name__, (PortalLoopMixin, cls), {"__qualname__": cls.__qualname__})
    return sub


def install_loop_mode() -> None:
    import asyncio
    from asyncio import base_events, events, proactor_events, unix_events

    from test.test_asyncio import utils as test_utils  # type: ignore[import-not-found]

    import greenback_loop

    ours = greenback_loop.EventLoop
    asyncio.SelectorEventLoop = ours
    unix_events.SelectorEventLoop = ours
    if hasattr(unix_events, "EventLoop"):  # 3.13+
        asyncio.EventLoop = ours  # type: ignore[attr-defined]
        unix_events.EventLoop = ours
    for name in ("_UnixDefaultEventLoopPolicy", "_DefaultEventLoopPolicy"):
        policy_cls = getattr(unix_events, name, None) or getattr(events, name, None)
        if policy_cls is not None:
            policy_cls._loop_factory = ours
    # Loops the tests build on asyncio's base classes. asyncio.BaseEventLoop
    # (test_runners and test_pep492 instantiate it) is replaced in the
    # package only: tests patch methods through the module path
    # (mock.patch("asyncio.base_events.BaseEventLoop.call_exception_handler")),
    # and a patch on a replacement class would miss every other loop.
    # proactor_events.BaseProactorEventLoop (test_proactor_events, with a
    # mocked proactor) has no such uses. BaseSelectorEventLoop stays:
    # test_events checks isinstance(loop, selector_events.BaseSelectorEventLoop)
    # on our EventLoop, which derives from the original.
    asyncio.BaseEventLoop = _with_portals(base_events.BaseEventLoop)  # type: ignore[misc]
    proactor = _with_portals(proactor_events.BaseProactorEventLoop)
    proactor_events.BaseProactorEventLoop = proactor  # type: ignore[misc]
    if hasattr(asyncio, "BaseProactorEventLoop"):  # Windows only
        asyncio.BaseProactorEventLoop = proactor
    test_utils.TestLoop = _with_portals(test_utils.TestLoop)


def install_policy_mode() -> Any:
    import asyncio
    import warnings

    import greenback_loop

    policy_cls = greenback_loop.GreenbackPolicy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(policy_cls())
    return policy_cls


def reinstall_policy_if_reset(policy_cls: Any) -> None:
    import asyncio
    import warnings
    from asyncio import events

    current = getattr(events, "_event_loop_policy", object())
    if current is None or type(current) is asyncio.DefaultEventLoopPolicy:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(policy_cls())


# -- the run -----------------------------------------------------------------


class Result(unittest.TestResult):
    """Turns unittest's callbacks into one record per test."""

    def __init__(self, rec: Recorder, test_timeout: float, before_test: Any = None) -> None:
        super().__init__()
        self.rec = rec
        self.test_timeout = test_timeout
        self.before_test = before_test
        self._test: unittest.TestCase | None = None
        self._outcome = ""
        self._details: list[str] = []
        self._t0 = 0.0

    def _set(self, outcome: str, detail: str | None = None) -> None:
        if _OUTCOME_RANK[outcome] >= _OUTCOME_RANK.get(self._outcome, -1):
            self._outcome = outcome
        if detail:
            self._details.append(_tail(detail))

    def _standalone(self, test: Any, outcome: str, detail: str) -> None:
        """Errors and skips of class/module fixtures, reported without startTest."""
        self.rec.emit(
            {
                "event": "test",
                "id": test.id() if hasattr(test, "id") else str(test),
                "outcome": outcome,
                "duration": 0.0,
                "details": [_tail(detail)],
                "fixture": True,
                "unraisable": [],
                "log_errors": [],
                "tasks": 0,
                "portal_tasks": 0,
            }
        )

    def _is_current(self, test: Any) -> bool:
        return self._test is not None and test is self._test

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().startTest(test)
        if self.before_test is not None:
            self.before_test()
        self._test = test
        self._outcome = ""
        self._details = []
        self.rec.begin(test.id())
        if self.test_timeout > 0:
            faulthandler.dump_traceback_later(self.test_timeout, exit=True)
        self._t0 = time.perf_counter()

    def stopTest(self, test: unittest.TestCase) -> None:  # noqa: N802
        duration = time.perf_counter() - self._t0
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        outcome = self._outcome or "error"
        if not self._outcome:
            self._details.append("the test reported no outcome")
        self.rec.emit(
            {
                "event": "test",
                "id": test.id(),
                "outcome": outcome,
                "duration": round(duration, 4),
                "details": self._details,
                **self.rec.end(),
            }
        )
        self._test = None

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addSuccess(test)
        self._set("pass")

    def addError(self, test: Any, err: Any) -> None:  # noqa: N802
        super().addError(test, err)
        self._record_error(test, "error", err)

    def addFailure(self, test: Any, err: Any) -> None:  # noqa: N802
        super().addFailure(test, err)
        self._record_error(test, "fail", err)

    def _record_error(self, test: Any, outcome: str, err: Any) -> None:
        text = _format_error(err)
        if self._is_current(test):
            self._set(outcome, text)
        else:
            self._standalone(test, outcome, text)

    def addSkip(self, test: Any, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        if self._is_current(test):
            self._set("skip", reason)
        elif not isinstance(test, unittest.case._SubTest):  # type: ignore[attr-defined]
            self._standalone(test, "skip", reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self._set("xfail")

    def addUnexpectedSuccess(self, test: Any) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._set("uxpass", "unexpected success")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:  # noqa: N802
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._set(kind, f"{subtest.id()}\n{_format_error(err)}")


def _format_error(err: Any) -> str:
    return "".join(traceback.format_exception(*err))


def iter_tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from iter_tests(test)
        else:
            yield test


def _read_ids(path: str | None) -> set[str] | None:
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("plain", "loop", "policy"), required=True)
    parser.add_argument("--core", choices=("c", "python"), default=None)
    parser.add_argument("--module", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--skip", help="file of test ids not to run")
    parser.add_argument("--only", help="file of test ids to run (all others are left out)")
    parser.add_argument("--test-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    faulthandler.enable()
    out = open(args.results, "a", encoding="utf-8")  # noqa: SIM115 (open until exit)

    portal_types: tuple[type, ...] = ()
    policy_cls = None
    if args.mode != "plain":
        import greenback_loop
        from greenback_loop import _impl

        if args.core and greenback_loop.implementation != args.core:
            out.write(
                json.dumps(
                    {
                        "event": "module_error",
                        "error": f"asked for core {args.core!r}, got "
                        f"{greenback_loop.implementation!r}",
                    }
                )
                + "\n"
            )
            return 2
        portal_types = (_impl.core.Portal,)

    rec = Recorder(out, portal_types)
    install_unraisable_hooks(rec)
    sys.stderr = StderrTee(sys.stderr, rec)
    census = install_census(rec)
    if args.mode == "loop":
        install_loop_mode()
    elif args.mode == "policy":
        policy_cls = install_policy_mode()
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(AsyncioLogRecorder(rec))

    loader = unittest.TestLoader()
    try:
        suite = loader.loadTestsFromName(args.module)
    except unittest.SkipTest as exc:
        rec.emit({"event": "module_skip", "reason": str(exc)})
        return 0
    except Exception:
        rec.emit({"event": "module_error", "error": traceback.format_exc()})
        return 1
    tests = list(iter_tests(suite))
    rec.emit({"event": "collected", "ids": [t.id() for t in tests], "census": census})
    skip, only = _read_ids(args.skip), _read_ids(args.only)
    tests = [
        t
        for t in tests
        if (skip is None or t.id() not in skip) and (only is None or t.id() in only)
    ]

    before = (lambda: reinstall_policy_if_reset(policy_cls)) if policy_cls is not None else None
    result = Result(rec, args.test_timeout, before)
    result.startTestRun()
    unittest.TestSuite(tests).run(result)
    result.stopTestRun()
    gc.collect()
    rec.emit({"event": "done"})
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
