"""The paper's initialisation experiment: its table from logs, and the whole command at 32 x 32, one epoch."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments.initialisation import Initialisation, markdown_table, results_table

ROOT = Path(__file__).resolve().parents[1]


def test_table_from_hand_written_curves():
    curves = pd.DataFrame({"init": ["lecun"] * 3 + ["pretrained"] * 3, "fold": 0, "epoch": [1, 2, 3] * 2,
                           "val_jaccard": [0.5, 0.7, 0.65, 0.8, 0.85, 0.83], "time_s": [10, 10, 11, 9, 9, 9]})
    runs = [Initialisation("lecun", "LeCun", "lecun"), Initialisation("imagenet", "ImageNet", None, "not run: absent"),
            Initialisation("pretrained", "whole network", "ckpt.pt")]
    table = results_table(curves, runs).set_index("initialisation")
    assert table.loc["LeCun", ["IoU epoch 1", "IoU epoch 3 (last)", "best IoU", "best epoch", "train time (s)"]
                     ].tolist() == [0.5, 0.65, 0.7, 2, 31]
    assert table.loc["whole network", ["best IoU", "best epoch"]].tolist() == [0.85, 2]
    assert pd.isna(table.loc["ImageNet", "best IoU"]) and table.loc["ImageNet", "note"] == "not run: absent"
    text = markdown_table(table.reset_index())
    with_metric = results_table(curves.assign(val_iou_ap=curves["val_jaccard"] - 0.1), runs,
                                {"IoU": "val_jaccard", "iou_ap": "val_iou_ap"}).set_index("initialisation")
    assert with_metric.loc["LeCun", ["iou_ap epoch 1", "iou_ap epoch 3 (last)", "best iou_ap", "best iou_ap epoch",
                                     "best epoch"]].round(4).tolist() == [0.4, 0.55, 0.6, 2, 2]
    assert "| LeCun | 0.5000 | 0.6500 | 0.7000 | 2 | 0.4000 | 0.5500 | 0.6000 | 2 | 31 |  |" in \
        markdown_table(with_metric.reset_index())
    assert "| LeCun | 0.5000 | 0.6500 | 0.7000 | 2 | 31 |  |" in text
    assert "| ImageNet |  |  |  |  |  | not run: absent |" in text


@pytest.mark.slow
def test_the_experiment_command_runs_without_imagenet_weights(tmp_path, torch_home, family, capsys):
    import torch

    from experiments.init_comparison import main
    from ternaus.fixtures.carvana import generate

    target = generate(tmp_path / "target", cars=2, test_cars=0, size=(32, 32), seed=7)
    # A whole-network checkpoint in the original code's bare state_dict format; pre-training on a second
    # dataset first (--pretrain-data) would be one more training run of the same code.
    checkpoint = tmp_path / "other_dataset.pt"
    torch.save(family("unet11").state_dict(), checkpoint)
    out = tmp_path / "exp"
    status = main(["--config", str(ROOT / "experiments/init_comparison.yaml"), "--pretrained", str(checkpoint),
                   f"data.root={target}", f"output_dir={out}", "train.epochs=1", "train.val_batch_size=16"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "not run: ImageNet weights file absent" in printed and str(torch_home) in printed
    table = pd.read_csv(out / "results.csv").set_index("initialisation")
    assert len(table) == 3 and table["best IoU"].notna().sum() == 2
    assert table["best IoU"].dropna().between(0, 1).all()
    assert (out / "results.md").read_text().count("\n") == 5
    assert (out / "iou_by_epoch.svg").read_text().count("<polyline") == 2
    # Identical settings: the same split, and only model.init differs between the two runs' saved configs.
    assert (out / "lecun" / "folds.csv").read_bytes() == (out / "pretrained" / "folds.csv").read_bytes()
    configs = [yaml.safe_load((out / name / "configs" / "train.yaml").read_text()) for name in ("lecun", "pretrained")]
    assert configs[1]["model"].pop("init") == str(checkpoint)
    assert configs[0]["model"].pop("init") == "lecun"
    configs[0].pop("output_dir"), configs[1].pop("output_dir")
    assert configs[0] == configs[1]
    assert main(["--config", str(ROOT / "experiments/init_comparison.yaml"), "--pretrained", str(tmp_path / "no.pt"),
                 f"output_dir={out}"]) == 2
