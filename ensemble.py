"""The ensemble stage (also `ternaus ensemble`); its code is ternaus/commands/ensemble.py."""
from ternaus.commands.ensemble import main

if __name__ == "__main__":
    raise SystemExit(main())
