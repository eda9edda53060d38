"""A competition's data, read right.

- ``files``: reading and checking image, mask and prediction files, and the CSV helpers every layout uses;
- ``layouts``: what every data layout provides, chosen by ``data.layout`` (``ternaus.registry.LAYOUTS``), and
  the checks ``prepare_folds.py`` runs on any of them;
- ``carvana``, ``folders``, ``rle_csv``: the layouts themselves;
- ``geometry``: how an image becomes network input (pad or resize) and a prediction goes back;
- ``dataset``: the PyTorch Dataset and its collation.

Importing this package imports nothing; ``files`` and ``layouts`` do not import torch.
"""
