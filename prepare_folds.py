"""The prepare_folds stage (also `ternaus prepare-folds`); its code is ternaus/commands/prepare_folds.py."""
from ternaus.commands.prepare_folds import main

if __name__ == "__main__":
    raise SystemExit(main())
