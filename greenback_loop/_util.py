"""greenback's helpers for using async objects from synchronous code."""

from __future__ import annotations

import functools
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
)
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar, cast

from . import _impl

T = TypeVar("T")


def _await(aw: Awaitable[T]) -> T:
    return _impl.core.await_(aw)  # type: ignore[no-any-return]


def autoawait(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Decorate an async function so that calling it runs it to completion
    through :func:`await_`: ``f(x)`` instead of ``await f(x)``.

    Useful where Python calls a function synchronously: properties, magic
    methods, callbacks of synchronous libraries.

    >>> import asyncio, greenback_loop
    >>> @greenback_loop.autoawait
    ... async def fetch(key):
    ...     await asyncio.sleep(0)
    ...     return key.upper()
    >>> async def main():
    ...     return fetch("k")   # a plain call, from code running in a task
    >>> greenback_loop.run(main())
    'K'
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwds: Any) -> T:
        return _await(fn(*args, **kwds))

    return wrapper


class async_context(Generic[T]):
    """Use an async context manager in a synchronous ``with`` statement::

        with greenback_loop.async_context(lock):
            ...

    ``__enter__`` and ``__exit__`` run ``__aenter__`` and ``__aexit__``
    through :func:`await_`.

    Raises:
        TypeError: (on entry) *cm* is not an async context manager.
    """

    __slots__ = ("_cm", "_aexit")

    def __init__(self, cm: AbstractAsyncContextManager[T]) -> None:
        self._cm = cm

    def __enter__(self) -> T:
        cls = type(self._cm)
        aenter = getattr(cls, "__aenter__", None)
        if aenter is None:
            raise TypeError(
                f"{cls.__name__!r} object does not support the asynchronous "
                "context manager protocol"
            )
        aexit = getattr(cls, "__aexit__", None)
        if aexit is None:
            raise TypeError(
                f"{cls.__name__!r} object does not support the asynchronous "
                "context manager protocol (missed __aexit__ method)"
            )
        self._aexit = aexit
        return cast(T, _await(aenter(self._cm)))

    def __exit__(self, *exc_info: Any) -> bool | None:
        return cast("bool | None", _await(self._aexit(self._cm, *exc_info)))


class async_iter(Generic[T]):
    """Use an async iterable in a synchronous ``for`` loop (or anywhere a
    sync iterator is expected)::

        for row in greenback_loop.async_iter(cursor):
            ...

    Each ``__next__`` runs ``__anext__`` through :func:`await_`. When the
    async iterator is an async generator, the result is a generator-like
    object with ``send``, ``throw`` and ``close`` too.

    Raises:
        TypeError: *iterable* is not an async iterable.
    """

    __slots__ = ("_it",)
    _it: AsyncIterator[T]

    def __new__(cls, iterable: AsyncIterable[T]) -> async_iter[T]:
        aiter_ = getattr(type(iterable), "__aiter__", None)
        if aiter_ is None:
            raise TypeError(
                "'async_iter' requires an object with __aiter__ method, got "
                f"{type(iterable).__name__}"
            )
        it = aiter_(iterable)
        if getattr(type(it), "__anext__", None) is None:
            raise TypeError(
                "'async_iter' received an object from __aiter__ that does not "
                f"implement __anext__: {type(it).__name__}"
            )
        if cls is async_iter and all(hasattr(it, name) for name in ("asend", "athrow", "aclose")):
            cls = async_generator
        self = object.__new__(cls)
        self._it = it
        return self

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return _await(type(self._it).__anext__(self._it))
        except StopAsyncIteration as exc:
            raise StopIteration(*exc.args) from None


class async_generator(async_iter[T]):
    """What :class:`async_iter` returns for an async generator: a sync
    generator-like view with ``send``, ``throw`` and ``close``."""

    __slots__ = ()

    def _agen(self) -> AsyncGenerator[T, Any]:
        return cast("AsyncGenerator[T, Any]", self._it)

    def send(self, value: Any) -> T:
        try:
            return _await(self._agen().asend(value))
        except StopAsyncIteration as exc:
            raise StopIteration(*exc.args) from None

    def throw(self, *exc_info: Any) -> T:
        try:
            return _await(self._agen().athrow(*exc_info))
        except StopAsyncIteration as exc:
            raise StopIteration(*exc.args) from None

    def close(self) -> None:
        _await(self._agen().aclose())
