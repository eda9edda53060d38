"""Where a competition's data lies and how it is read: the ``data`` section resolved once, at a stage's entry.

``DataSource.of(cfg)`` turns the configuration into this object; the layouts (``ternaus.data.layouts``) and
every reader below the stage entry points take it, never the whole ``Config``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ternaus.config import Config, DataConfig, MasksCsvConfig, class_names
from ternaus.rle import RleFormat

__all__ = ["DataSource"]


@dataclass(frozen=True)
class DataSource:
    """The data section's settings with its paths resolved under ``root`` (absolute paths stay), and the classes'
    names as the CSVs and the submission write them (one per network output class)."""

    settings: DataConfig = field(default_factory=DataConfig)
    classes: tuple[str, ...] = ("1",)

    @classmethod
    def of(cls, cfg: Config) -> "DataSource":
        return cls(cfg.data, tuple(class_names(cfg)))

    def path(self, relative: str) -> Path:
        """A data path: absolute paths stay, relative ones are under ``data.root``."""
        return Path(relative) if os.path.isabs(relative) else Path(self.settings.root) / relative

    @property
    def root(self) -> Path:
        return Path(self.settings.root)

    @property
    def layout(self) -> str:
        return self.settings.layout

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_dir(self) -> Path:
        return self.path(self.settings.train_dir)

    @property
    def masks_dir(self) -> Path:
        return self.path(self.settings.masks_dir)

    @property
    def masks_csv(self) -> Path:
        return self.path(self.settings.masks_csv)

    @property
    def test_dir(self) -> Path:
        return self.path(self.settings.test_dir)

    @property
    def sample_submission(self) -> Path:
        return self.path(self.settings.sample_submission)

    @property
    def csv(self) -> MasksCsvConfig:
        return self.settings.csv

    @property
    def rle(self) -> RleFormat:
        return self.settings.rle

    def places(self) -> dict[str, Path]:
        """The data's folders (``data.train_dir``, ``masks_dir``, ``test_dir``) and files (``data.masks_csv``,
        ``sample_submission``) that exist, by the key that names them, resolved: what a stage's outputs must keep
        apart from (``run_files.check_outputs``)."""
        keys = ("train_dir", "masks_dir", "test_dir", "masks_csv", "sample_submission")
        paths = {f"data.{key}": self.path(getattr(self.settings, key)) for key in keys}
        return {k: p.resolve() for k, p in paths.items() if p.exists()}
