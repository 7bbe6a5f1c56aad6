"""Both console commands install, answer --help for every sub-command, and fail in one clear line."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from isic_common.command_line import build_parser, run
from isic_common.errors import ConfigError
from isic_station import cli as station_cli


def _subcommand_paths(parser: argparse.ArgumentParser, prefix=()):
    """Every sub-command path of an argparse tree, e.g. ('bench', 'model')."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommand_paths(sub, prefix + (name,))


@pytest.mark.parametrize("command", ["isic-station", "isic-model"])
def test_console_command_help(command):
    executable = Path(sys.executable).parent / command  # the venv's console script
    out = subprocess.run([str(executable), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"usage: {command}" in out.stdout


@pytest.mark.parametrize(
    "module", ["isic_station.cli", "isic_model.cli"],
)
def test_every_subcommand_has_help(module, capsys):
    main = __import__(module, fromlist=["main"]).main
    parser_modules = __import__(module, fromlist=["COMMAND_MODULES"]).COMMAND_MODULES
    parser = build_parser("x", "x", "0", parser_modules)
    for path in _subcommand_paths(parser):
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0, path
        assert capsys.readouterr().out.startswith("usage:"), path


def test_station_error_is_one_line_and_its_exit_code(capsys):
    def register(sub):
        parser = sub.add_parser("broken")

        def handler(_args):
            raise ConfigError("station.id: '' is too short (expected 1-64 characters)")

        parser.set_defaults(handler=handler)

    parser = argparse.ArgumentParser(prog="isic-station")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    assert run(parser, ["broken"]) == 78
    err = capsys.readouterr().err
    assert err == "isic-station: error: station.id: '' is too short (expected 1-64 characters)\n"


def test_missing_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        station_cli.main([])
    assert exit_info.value.code == 2


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "isic_station.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "isic-station" in out.stdout
