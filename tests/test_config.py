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
                       match="model.name: must be one of unet11, unet16, albunet34, linknet34, scratch, unet, linknet, "
                             "got 'unet12'"):
        load_config(None, ["model.name=unet12", "model.transposed=true", "data.input_size=[64, 64]"])
    with pytest.raises(ConfigError, match="model.freeze_encoder_epochs: 3 would keep a randomly initialised encoder"):
        load_config(None, ["model.init=lecun", "model.freeze_encoder_epochs=3"])


def test_stage_options_may_follow_the_overrides():
    from ternaus.cli import stage_parser

    parser = stage_parser("a stage")
    parser.add_argument("--threshold", type=float, default=None)
    args = parser.parse_args(["--config", "c.yaml", "a.b=1", "--threshold", "0.6", "c.d=2"])
    assert (args.config, args.threshold, args.overrides) == ("c.yaml", 0.6, ["a.b=1", "c.d=2"])


# ---------------------------------------------------------------- choices that own their settings, renamed keys


def test_a_choice_takes_its_own_settings_and_refuses_another_choices():
    cfg = load_config(None, ["train.schedule={name: cycle, cycle_len: 20, milestones: [10, 15], gamma: 0.1}",
                             "train.optimizer=sgd", "train.optimizer.momentum=0.5"])
    assert (cfg.train.schedule.name, cfg.train.schedule.cycle_len, cfg.train.schedule.milestones) == ("cycle", 20,
                                                                                                       [10, 15])
    assert (cfg.train.optimizer.name, cfg.train.optimizer.momentum) == ("sgd", 0.5)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.schedule=constant", "train.schedule.cycle_len=3", "train.optimizer.momentum=0.5",
                           "train.loss={name: bce_dice, edge_window: 41}"])
    message = str(err.value)
    assert "train.schedule.cycle_len: constant has no such setting; carvana, cycle, step_then_cycle take(s) it" in message
    assert "train.optimizer.momentum: adam has no such setting; rmsprop, sgd take(s) it" in message
    assert "train.loss.edge_window: bce_dice has no such setting; bce_dice_edge take(s) it" in message
    assert message.startswith("3 problem(s)")


def test_a_schedules_settings_are_checked_only_for_that_schedule():
    # The carvana schedule never reads milestones: a cycle length below them is no problem (it was refused).
    assert load_config(None, ["train.schedule=carvana", "train.schedule.cycle_len=3"]).train.schedule.cycle_len == 3
    with pytest.raises(ConfigError, match=r"train.schedule.milestones: \[2, 4\] must lie in 0 .. 2"):
        load_config(None, ["train.schedule=cycle", "train.schedule.cycle_len=3"])
    with pytest.raises(ConfigError, match="train.schedule.name: must be one of carvana, constant"):
        load_config(None, ["train.schedule=cosine"])


def test_field_rules_report_every_problem_at_once_and_cross_checks_still_run():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epochs=0", "train.lr=-1", "train.augment.hflip=1.5", "train.loss.name=bce_dice_edge",
                           "train.loss.edge_window=40", "model.activation=softmax", "data.num_workers=-1"])
    message = str(err.value)
    for expected in ("train.epochs: must be at least 1, got 0", "train.lr: must be positive, got -1.0",
                     "train.augment.hflip: must lie in [0, 1], got 1.5", "train.loss.edge_window: 40 is even",
                     "bce_dice_edge weighs sigmoid outputs", "data.num_workers: must be 0 or more, got -1"):
        assert expected in message
    assert message.startswith("6 problem(s)")


def test_renamed_keys_still_work_for_a_release_with_a_note(capsys):
    old = load_config(None, ["train.amp=false", "train.threshold=0.4", "train.optimizer=sgd", "train.momentum=0.5",
                             "train.cycle_len=3", "submission.min_area=7"])
    assert (old.runtime.amp, old.postprocess.threshold, old.train.optimizer.momentum) == (False, 0.4, 0.5)
    assert old.train.schedule.cycle_len == 3 and old.postprocess.min_area == 7 and not old.postprocess.use_searched
    notes = capsys.readouterr().err
    assert "train.amp is renamed runtime.amp" in notes and "train.threshold is renamed postprocess.threshold" in notes
    # A flat key the chosen schedule never read is dropped with a note, not refused.
    assert load_config(None, ["train.schedule=constant", "train.gamma=0.1"]).train.schedule.name == "constant"
    assert "train.gamma: ignored, the chosen schedule does not read it" in capsys.readouterr().err


def test_the_carvana_schedule_takes_its_old_flat_key_and_notes_the_keys_it_never_reads(tmp_path, capsys):
    """Issue 24: `train.schedule=carvana train.cycle_len=3` was refused over train.cycle_milestones, a key carvana
    never reads (an old config file still holding it)."""
    path = tmp_path / "old.yaml"
    path.write_text("train:\n  cycle_milestones: [10, 15]\n  cycle_start: 23\n")
    cfg = load_config(path, ["train.schedule=carvana", "train.cycle_len=3"])
    assert (cfg.train.schedule.name, cfg.train.schedule.cycle_len, cfg.train.schedule.cycle_step) == ("carvana", 3, 2)
    notes = capsys.readouterr().err
    assert "train.cycle_len is renamed train.schedule.cycle_len" in notes
    assert "train.cycle_milestones: ignored, the chosen schedule does not read it; remove it" in notes
    assert "train.cycle_start: ignored, the chosen schedule does not read it; remove it" in notes


def test_a_renamed_key_set_twice_differently_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  threshold: 0.4\npostprocess:\n  threshold: 0.6\n")
    with pytest.raises(ConfigError, match="train.threshold: renamed postprocess.threshold, which is also set"):
        load_config(path)


def test_the_saved_config_loads_back_the_same():
    cfg = load_config("configs/carvana_linknet34.yaml")
    from ternaus.config import config_to_dict

    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    again = load_config(None, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                               for k, v in yaml.safe_load(text).items() if not isinstance(v, dict)])
    assert again.output_dir == cfg.output_dir
    from ternaus.schema import from_dict

    errors: list[str] = []
    assert from_dict(type(cfg), yaml.safe_load(text), "", errors) == cfg and not errors


def test_naming_another_choice_keeps_only_the_settings_it_takes():
    scratch = "configs/carvana_scratch.yaml"  # loss: bce_dice_edge, weight 1.0, edge_window 41, edge_weight 3.0
    for override in ("train.loss.name=lovasz_hinge", "train.loss=lovasz_hinge"):
        loss = load_config(scratch, [override, "train.loss.weight=0.25"]).train.loss
        assert (loss.name, loss.weight) == ("lovasz_hinge", 0.25) and not hasattr(loss, "edge_window")
    assert load_config(scratch, ["train.optimizer=rmsprop"]).train.optimizer.momentum == 0.9  # kept from sgd's
    assert load_config(scratch, ["train.schedule.name=cycle"]).train.schedule.gamma == 0.5
