"""CPython's own test_asyncio, run against greenback_loop's loops and policy.

``python -m tests.conformance.run_test_asyncio`` (or ``make conformance``);
see ``run_test_asyncio.py`` for the modes and ``docs/development.rst``.
"""
