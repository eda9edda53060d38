"""``python -m ternaus COMMAND ...`` is the ``ternaus`` command (ternaus/commands/__init__.py)."""

from ternaus.commands import main

if __name__ == "__main__":
    raise SystemExit(main())
