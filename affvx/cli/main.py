"""The root of the `affvx` command line."""

from __future__ import annotations

import sys

import typer

from affvx import __version__
from affvx.cli import cancel, collect, data, folds, launch, status, train, tune
from affvx.cli._errors import JOB_ERRORS, USER_ERRORS, print_error

app = typer.Typer(
    name="affvx",
    help="Cross-validation experiments for continuous emotion recognition (valence, arousal).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.app, name="data")
app.command("folds")(folds.folds_command)
app.command("train")(train.train_command)
app.command("launch")(launch.launch_command)
app.command("tune")(tune.tune_command)
app.command("status")(status.status_command)
app.command("collect")(collect.collect_command)
app.command("cancel")(cancel.cancel_command)

_debug = False


def _show_version(value: bool) -> None:
    if value:
        print(f"affvx {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Cross-validation experiments for continuous emotion recognition (valence, arousal)."""
    global _debug
    _debug = debug


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: exit 0 done, 1 jobs failed, 2 bad input.

    `affvx` or `affvx data` alone prints that command's help on stdout and exits 0: asking
    what a command can do is not a mistake, and the help is the answer (as `--help` gives it).
    """
    try:
        result = app(args=argv, prog_name="affvx", standalone_mode=False)
    except typer.Abort:
        print_error("aborted")
        sys.exit(130)
    except typer.TyperException as error:  # a usage error: bad option, missing argument
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
            sys.stdout.write(context.get_help() + "\n")  # (typer vendors click: match by name)
            sys.exit(0)
        where = context.command_path if context else "affvx"
        print_error(f"{error.format_message()} (see '{where} --help')")
        sys.exit(getattr(error, "exit_code", 2))
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)
    except USER_ERRORS as error:
        if _debug:
            raise
        print_error(error)
        sys.exit(2)
    except JOB_ERRORS as error:
        if _debug:
            raise
        print_error(f"the job failed: {error}")
        sys.exit(1)
    except OSError as error:
        if _debug:
            raise
        print_error(_describe_os_error(error))
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)


def _describe_os_error(error: OSError) -> str:
    reason = error.strerror or str(error)
    if error.filename:
        return f"{error.filename}: {reason}"
    return reason
