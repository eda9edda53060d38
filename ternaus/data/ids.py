"""Image ids as CSVs spell them, made comparable by one normalisation, and refused when they could name the wrong
image: ``X_01.jpg`` and ``X_01`` are the same image; ``../../etc/X.jpg`` names no image of the data (it is not
merged into ``X``'s); ``X.png`` does not name the image ``X.jpg``.
"""

from __future__ import annotations

from collections.abc import Iterable

from ternaus.data.files import IMAGE_SUFFIXES
from ternaus.errors import DataError

__all__ = ["image_id", "normalise_ids"]

SEPARATORS = ("/", "\\")


def image_id(name: str) -> tuple[str, str]:
    """``X_01.jpg`` -> ``("X_01", ".jpg")``: the id and the image suffix it was spelled with (``""`` for none);
    a suffix is one of IMAGE_SUFFIXES in any case (``.JPG``). Nothing else is changed."""
    lower = name.lower()
    suffix = next((s for s in IMAGE_SUFFIXES if lower.endswith(s) and len(name) > len(s)), "")
    return (name[: -len(suffix)], name[-len(suffix):]) if suffix else (name, "")


def _suffix_problem(name: str, stem: str, suffix: str, suffixes: dict[str, str] | tuple[str, ...]) -> str | None:
    if isinstance(suffixes, dict):
        actual = suffixes.get(stem)  # an id without an image is the caller's to report
        if actual is None or actual.lower() == suffix.lower():
            return None
        return f"{name!r} names a {suffix} file, but the image is {stem}{actual}"
    if suffix.lower() in suffixes:
        return None
    return f"{name!r} names a {suffix} file, but the images are {'/'.join(suffixes)}"


def _problem(name: str, stem: str, suffix: str, suffixes: dict[str, str] | tuple[str, ...] | None) -> str | None:
    if any(sep in name for sep in SEPARATORS) or stem in ("", ".", ".."):
        return f"{name!r} is a path, not an image's name"
    return _suffix_problem(name, stem, suffix, suffixes) if suffix and suffixes is not None else None


def normalise_ids(names: Iterable[str], where: str, suffixes: dict[str, str] | tuple[str, ...] | None = None,
                  unique: bool = True) -> list[str]:
    """The ids of ``names`` (``image_id``), checked; ``where`` names the file for the message.

    ``suffixes``: the images' suffixes, one per id (``{"X": ".jpg"}``, the files on disk) or the only ones the
    layout has (``(".jpg",)``): a name spelled with another image suffix is refused. A name with a path
    separator is refused. Two spellings of one id (``X.jpg``, ``X``) are refused, and with ``unique`` any id
    listed twice. Raises DataError listing every problem."""
    names = [str(n) for n in names]
    ids, problems, spellings = [], [], {}
    for name in names:
        stem, suffix = image_id(name)
        problem = _problem(name, stem, suffix, suffixes)
        if problem:
            problems.append(problem)
        ids.append(stem)
        spellings.setdefault(stem, []).append(name)
    for stem, spelled in spellings.items():
        if len(set(spelled)) > 1:
            problems.append(f"{' and '.join(repr(s) for s in sorted(set(spelled)))} name the same image {stem}")
        elif unique and len(spelled) > 1:
            problems.append(f"{spelled[0]!r} is listed {len(spelled)} times")
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise DataError(f"{where} lists images it cannot mean, {len(problems)} problem(s):\n  {shown}\n"
                        "Name each image once, by its file name (with or without its suffix), without a folder")
    return ids
