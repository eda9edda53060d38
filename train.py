"""The train stage (also `ternaus train`); its code is ternaus/commands/train.py."""
from ternaus.commands.train import main

if __name__ == "__main__":
    raise SystemExit(main())
