"""The predict stage (also `ternaus predict`); its code is ternaus/commands/predict.py."""
from ternaus.commands.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
