"""`kd-depth`: every command (the core's and those registered by other packages) imports and answers --help."""
from __future__ import annotations

import argparse
import importlib
from importlib.metadata import entry_points

import pytest

from kd_depth_core.cli import COMMANDS, PLUGIN_GROUP, all_commands, main


@pytest.mark.parametrize("command", sorted(all_commands()))
def test_every_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: kd-depth {command}" in capsys.readouterr().out


@pytest.mark.parametrize("command", sorted(all_commands()))
def test_every_option_says_what_it_does(command):
    """--help describes every option (a bare `--precision {fp32,fp16,bf16}` line leaves the user guessing)."""
    parser = argparse.ArgumentParser()
    importlib.import_module(all_commands()[command][0]).add_arguments(parser)
    silent = [action.option_strings[0] if action.option_strings else action.dest for action in parser._actions
              if not action.help]
    assert not silent, f"kd-depth {command}: options without help: {', '.join(silent)}"


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in all_commands())


def test_ros_and_demo_commands_come_from_entry_points_not_the_core_table():
    """convert-bag (kd_depth_ros) and demo (kd_depth_ros.demo) reach `kd-depth` only through the entry point group."""
    assert "convert-bag" not in COMMANDS and "demo" not in COMMANDS
    assert all(not module.startswith("kd_depth_ros") for module, _ in COMMANDS.values())
    registered = {point.name: point.value for point in entry_points(group=PLUGIN_GROUP)}
    assert registered == {"ros": "kd_depth_ros.cli_plugin:COMMANDS", "demo": "kd_depth_ros.demo:COMMANDS"}
    commands = all_commands()
    assert commands["convert-bag"][0] == "kd_depth_ros.bag_cli"
    assert commands["demo"][0] == "kd_depth_ros.demo.demo_cli"


def test_unknown_command_names_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'" in err and "convert-bag" in err and "demo" in err
