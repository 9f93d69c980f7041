"""Benchmarks: the cost of greenback_loop's portals against plain asyncio and
uvloop, greenback 1.x and SQLAlchemy's greenlet bridge.

Run ``python -m benchmarks --help`` from the repository root; see
``benchmarks/README.md`` for what each case measures.
"""
