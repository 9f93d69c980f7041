"""A synchronous helper that needs an async result, called from a task.

With nest_asyncio, the helper re-enters the running loop:

    import nest_asyncio; nest_asyncio.apply()
    def lookup(key):
        return asyncio.get_event_loop().run_until_complete(fetch(key))

With greenback_loop, it awaits on the running loop, suspending only its own
task; the program runs on a greenback_loop loop instead of a patched one.
"""

import asyncio

import greenback_loop

log = []


async def fetch(key):
    await asyncio.sleep(0.01)
    return key.upper()


def lookup(key):  # synchronous, deep in a call stack
    return greenback_loop.await_(fetch(key))


async def handler(key):
    log.append(f"start {key}")
    value = lookup(key)
    log.append(f"end {key}")
    return value


async def main():
    return await asyncio.gather(handler("a"), handler("b"))


print(greenback_loop.run(main()))  # ['A', 'B']
print(log)  # ['start a', 'start b', 'end a', 'end b']
