"""ternaus: the TernausNet (UNet11) Kaggle segmentation pipeline, from folds to submission."""

__all__ = ["__version__"]

__version__ = "0.1.0"
