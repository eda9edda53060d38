"""The export stage (also `ternaus export`); its code is ternaus/commands/export.py."""
from ternaus.commands.export import main

if __name__ == "__main__":
    raise SystemExit(main())
