"""The make_submission stage (also `ternaus make-submission`); its code is ternaus/commands/make_submission.py."""
from ternaus.commands.make_submission import main

if __name__ == "__main__":
    raise SystemExit(main())
