"""``python -m greenback_loop [--uvloop] [script | -m module | -c command | -] [args]``:
run a program, unchanged, with a portal in every asyncio task, or, with no
program, an asyncio REPL. ``--help`` explains; the code is in ``_cli``."""

from greenback_loop._cli import main

if __name__ == "__main__":
    main()
