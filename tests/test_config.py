import pytest
import yaml

from ternaus.config import Config, load_config, save_config
from ternaus.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_required_keys_exist():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    for value in (cfg.data.root, cfg.output_dir, cfg.folds.n_folds, cfg.train.epochs, cfg.train.batch_size,
                  cfg.model.init):
        assert value is not None
    assert cfg.data.input_size is None


def test_shipped_configs_load():
    carvana = load_config("configs/carvana.yaml")
    assert (carvana.train.epochs, carvana.train.batch_size, carvana.folds.n_folds) == (52, 4, 5)
    assert carvana.model.init == "imagenet" and carvana.train.loss.name == "bce_dice"
    assert carvana.train.lr == pytest.approx(1e-4)
    assert load_config("configs/synthetic.yaml").model.init == "lecun"


def test_overrides_are_parsed_as_yaml(tmp_path):
    cfg = load_config(write(tmp_path, "train: {epochs: 3}\n"),
                      ["train.epochs=7", "data.input_size=[128, 192]", "train.lr=1e-3", "model.encoder_weights=null"])
    assert cfg.train.epochs == 7
    assert cfg.data.input_size == [128, 192]
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model.encoder_weights is None


def test_unknown_keys_suggest_the_closest_and_all_problems_are_listed(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\n  batch_size: four\ndata:\n  input_size: [100, 200]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "unknown key 'train.epoch' (did you mean 'epochs'?)" in message
    assert "train.batch_size: expected int, got 'four'" in message
    assert str(path) in message


def test_impossible_values_are_listed_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.input_size=[100,200]", "folds.n_folds=1", "train.loss.name=dice",
                           "train.lr=-1", "model.init=lecum"])
    message = str(err.value)
    assert "5 problem(s)" in message
    assert "use [128, 224]" in message
    assert "folds.n_folds" in message and "train.loss.name" in message and "train.lr" in message
    assert "model.init: 'lecum'" in message


def test_fold_list_outside_range(tmp_path):
    with pytest.raises(ConfigError, match=r"train.folds: \[5\] outside 0..4"):
        load_config(None, ["train.folds=[0, 5]"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.epochs"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "data.input_size=[64, 96]"])
    path = save_config(cfg, tmp_path / "out" / "resolved.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 2


def test_model_options_are_checked_against_the_model():
    cfg = load_config(None, ["model.name=albunet34", "model.transposed=true", "model.freeze_encoder_epochs=2"])
    assert (cfg.model.name, cfg.model.transposed, cfg.model.freeze_encoder_epochs) == ("albunet34", True, 2)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.transposed=true", "model.freeze_encoder_epochs=-1"])
    message = str(err.value)
    assert "model.transposed: unet11's decoder always uses its own transposed convolutions" in message
    assert "model.freeze_encoder_epochs: must be 0 or more, got -1" in message
    with pytest.raises(ConfigError,
                       match="model.name: must be one of unet11, unet16, albunet34, linknet34, scratch, got 'unet12'"):
        load_config(None, ["model.name=unet12", "model.transposed=true", "data.input_size=[64, 64]"])
    with pytest.raises(ConfigError, match="model.freeze_encoder_epochs: 3 would keep a randomly initialised encoder"):
        load_config(None, ["model.init=lecun", "model.freeze_encoder_epochs=3"])


def test_stage_options_may_follow_the_overrides():
    from ternaus.cli import stage_parser

    parser = stage_parser("a stage")
    parser.add_argument("--threshold", type=float, default=None)
    args = parser.parse_args(["--config", "c.yaml", "a.b=1", "--threshold", "0.6", "c.d=2"])
    assert (args.config, args.threshold, args.overrides) == ("c.yaml", 0.6, ["a.b=1", "c.d=2"])
