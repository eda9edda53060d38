"""The report stage (also `ternaus report`); its code is ternaus/commands/report.py."""
from ternaus.commands.report import main

if __name__ == "__main__":
    raise SystemExit(main())
