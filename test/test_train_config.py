"""Typed training config: unknown keys, wrong types, key=value overrides, round trip."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kd_depth_core.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_train_config,
    name_the_override,
    parse_override,
    parse_section,
)

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_key_names_file_key_path_and_valid_keys(tmp_path):
    path = _write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: optim.lrr: unknown key; valid keys: ")
    for name in ("lr", "weight_decay", "betas", "scheduler", "warmup_steps"):
        assert name in message.split("valid keys: ")[1]


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"run.yaml: trainer: unknown key; valid keys: data, model, task, optim, "
                                          r"train$"):
        load_train_config(_write(tmp_path, "trainer: {}\n"))


@pytest.mark.parametrize("text, fragment", [
    ("train:\n  max_steps: ten\n", "train.max_steps: expected an integer, got 'ten'"),
    ("train:\n  max_steps: 1.5\n", "train.max_steps: expected an integer, got 1.5"),
    ("data:\n  stereo: 1\n", "data.stereo: expected true/false, got 1"),
    ("data:\n  size: [192]\n", "data.size: expected a list of 2 values"),
    ("data:\n  size: [192, wide]\n", "data.size[1]: expected an integer, got 'wide'"),
    ("train:\n  amp: fp8\n", "train.amp: expected one of 'none', 'bf16', 'fp16', got 'fp8'"),
    ("optim:\n  lr: fast\n", "optim.lr: expected a number, got 'fast'"),
    ("optim: 3\n", "optim: expected a mapping"),
])
def test_wrong_types_are_named(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as info:
        load_train_config(_write(tmp_path, text))
    assert fragment in str(info.value)


def test_values_and_yaml_1_1_exponent_floats(tmp_path):
    # PyYAML reads `1e-4` (no dot) as a string; a float field must still take it.
    cfg = load_train_config(_write(tmp_path, "optim:\n  lr: 1e-4\n  betas: [0.5, 0.9]\ndata:\n  offsets: [-2, 2]\n"))
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.5, 0.9)
    assert cfg.data.offsets == (-2, 2)
    assert cfg.train.max_steps == TrainConfig().train.max_steps  # untouched default


def test_override_parsing():
    assert parse_override("optim.lr=2e-4") == (["optim", "lr"], "2e-4")  # converted by the float field
    assert parse_override("data.size=[96, 320]") == (["data", "size"], [96, 320])
    assert parse_override("data.stereo=true") == (["data", "stereo"], True)
    assert parse_override("train.resume=") == (["train", "resume"], "")
    assert parse_override("model.kwargs.encoder=resnet18") == (["model", "kwargs", "encoder"], "resnet18")
    for bad in ("optim.lr", "=3", "optim..lr=3"):
        with pytest.raises(ConfigError, match="expected dotted.key=value"):
            parse_override(bad)


def test_overrides_win_over_file_and_nest(tmp_path):
    path = _write(tmp_path, "optim:\n  lr: 0.1\nmodel:\n  name: tiny\n  kwargs: {width: 8}\n")
    cfg = load_train_config(path, ["optim.lr=2e-4", "model.kwargs.depth=3", "data.size=[96, 320]",
                                   "task.kwargs.mode=stereo"])
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.model.kwargs == {"width": 8, "depth": 3}
    assert cfg.data.size == (96, 320)
    assert cfg.task.kwargs == {"mode": "stereo"}


def test_a_bad_override_is_named_as_the_override_not_the_file(tmp_path):
    """The user would look in the file for a key set on the command line: the error names the override."""
    with pytest.raises(ConfigError, match=r"^override 'optim.lrr=1' \(command line\): optim.lrr: unknown key; "
                                          r"valid keys: name, lr, "):
        config_from_dict(TrainConfig, {}, "<cli>", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="optim.lr is a value, not a section"):
        apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr.x=2"])
    path = _write(tmp_path, "optim:\n  lr: 0.1\ntrain:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}: train.stepz: unknown key"):  # the file's own key: the file
        load_train_config(path, ["optim.lr=0.2"])
    path = _write(tmp_path, "optim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"^override 'optim.lr=fast' \(command line\): optim.lr: expected a number"):
        load_train_config(path, ["data.stereo=false", "optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"^override 'trian.steps=1' \(command line\): trian: unknown key"):
        load_train_config(path, ["trian.steps=1"])
    with pytest.raises(ConfigError, match=r"^override 'data.offsets=\[1, x\]' \(command line\): data.offsets\[1\]: "):
        load_train_config(path, ["data.offsets=[1, x]"])
    # errors raised later about the loaded config (by a task, prefixed with cfg.source) are named by the CLI
    cfg = load_train_config(path, ["task.kwargs.teacher_path=/nope.safetensors"])
    later = f"{cfg.source}: task.kwargs.teacher_path: /nope.safetensors not found"
    assert name_the_override(later, cfg.source, {"optim": {"lr": 0.1}}, ["task.kwargs.teacher_path=/nope.safetensors"]) \
        == "override 'task.kwargs.teacher_path=/nope.safetensors' (command line): task.kwargs.teacher_path: " \
        "/nope.safetensors not found"
    assert name_the_override(f"{cfg.source}: optim.lr: too high", cfg.source, {"optim": {"lr": 0.1}},
                             ["task.kwargs.teacher_path=x"]) == f"{path}: optim.lr: too high"
    assert name_the_override(later, cfg.source, {}, []) == later  # no override: the file is to blame


def test_to_dict_round_trips_through_yaml(tmp_path):
    cfg = load_train_config(_write(tmp_path, "data:\n  size: [64, 96]\n"), ["optim.phase_lr={main: 0.5}"])
    data = cfg.to_dict()
    assert data["data"]["size"] == [64, 96] and "source" not in data
    again = config_from_dict(TrainConfig, yaml.safe_load(yaml.safe_dump(data)), "again")
    assert again.to_dict() == data


def test_parse_section_for_task_options():
    @dataclass
    class Options:
        mode: str = "mono"
        weight: float = 1.0

    options = parse_section(Options, {"weight": 2}, "x.yaml: task.kwargs")
    assert options.weight == 2.0 and isinstance(options.weight, float)
    with pytest.raises(ConfigError, match=r"^x.yaml: task.kwargs.wieght: unknown key; valid keys: mode, weight$"):
        parse_section(Options, {"wieght": 2}, "x.yaml: task.kwargs")


@pytest.mark.parametrize("path", sorted((REPO / "config" / "train").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_train_configs_load(path):
    cfg = load_train_config(path)
    assert cfg.model.name and cfg.task.name


def test_cli_prints_the_resolved_config_and_reports_config_errors(tmp_path, capsys):
    import argparse

    from kd_depth_core.train import train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    path = _write(tmp_path, "model:\n  name: resnet18_md2\n")
    assert train_cli.run(parser.parse_args(["--config", str(path), "--print-config", "optim.lr=3e-4"])) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == pytest.approx(3e-4) and printed["model"]["name"] == "resnet18_md2"
    assert train_cli.run(parser.parse_args(["--config", str(path), "optim.lrr=1"])) == 2
    assert "optim.lrr: unknown key" in capsys.readouterr().err
    # A config without data.root fails before any training, naming the key.
    assert train_cli.run(parser.parse_args(["--config", str(path), f"train.out_dir={tmp_path / 'run'}"])) == 2
    assert "data.root: expected the folder of training sequences" in capsys.readouterr().err
