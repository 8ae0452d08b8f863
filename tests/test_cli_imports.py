"""`cocoa-lens --help` stays cheap: listing the commands imports no torch, and the placeholder help of every
command is the help its own `register` gives it."""

import subprocess
import sys

import pytest

from analysis import cli


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_building_the_parser_imports_no_torch():
    assert _run("import sys, analysis.cli; analysis.cli.build_parser(); print('torch' in sys.modules)") == "False"


def test_top_level_help_imports_no_torch():
    code = ("import contextlib, io, sys, analysis.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            "    analysis.cli.main(['--help'])\n"
            "assert 'study' in out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'transformer_lens') if m in sys.modules))")
    assert _run(code) == "[]"


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_placeholder_help_is_the_commands_own(command):
    """The top-level help reads the same whether `command` is a placeholder or registered by its module."""
    assert cli.build_parser(command).format_help() == cli.build_parser().format_help()


@pytest.mark.parametrize("argv", [["evaluate"], ["train", "--recipe", "r.yaml", "--out", "o"],
                                  ["capture", "--out", "o"], ["study"]])
def test_the_named_command_gets_its_options(argv):
    args = cli.build_parser(cli._command(argv)).parse_args(argv)
    assert args.command == argv[0] and callable(args.func)


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--n", "0"], "cocoa-lens evaluate: error: argument --n-samples/--n: must be at least 1"),
    (["capture", "--out", "o", "--mask", "bridged"], "cocoa-lens capture: error: argument --mask: unknown mask"),
    (["train", "--out", "o"], "cocoa-lens train: error: the following arguments are required: --recipe"),
    (["trian"], "cocoa-lens: error: argument command: invalid choice: 'trian'"),
])
def test_a_bad_command_line_is_an_argparse_error_of_its_command(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
