"""Synchronous SQLAlchemy code over an asyncio engine.

With SQLAlchemy alone, it has to run inside ``greenlet_spawn``:

    async with engine.connect() as conn:
        count = await conn.run_sync(count_users)

In a task with a greenback_loop portal, it is a plain call.
"""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import greenback_loop


def count_users(conn):  # synchronous SQLAlchemy code
    conn.execute(text("CREATE TABLE users (name TEXT)"))
    conn.execute(text("INSERT INTO users VALUES ('ada'), ('bob')"))
    return conn.execute(text("SELECT count(*) FROM users")).scalar_one()


async def main():
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        with engine.sync_engine.connect() as conn:  # no run_sync needed
            return count_users(conn)
    finally:
        await engine.dispose()


print(greenback_loop.run(main()))  # 2
