"""`kd-depth <command>`: a thin dispatcher.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
Modules are imported only when their command runs, so `kd-depth --help` is instant.

The core's own commands are in :data:`COMMANDS`. Other installed packages add theirs through the
entry point group :data:`PLUGIN_GROUP` (``kd_depth.commands``): each entry point names a table of
the same shape (setup.py registers ``kd_depth_ros.cli_plugin:COMMANDS`` for ``convert-bag`` and
``kd_depth_ros.demo:COMMANDS`` for ``demo``). This package never names those packages itself.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from importlib.metadata import entry_points

PLUGIN_GROUP = "kd_depth.commands"

# command -> (module, one-line help). Add a row when a capability lands.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("kd_depth_core.data.synthetic.cli", "generate the procedural synthetic world as training sequences"),
    "validate": ("kd_depth_core.data.validate_cli", "check training sequences; errors name the file and field"),
    "models": ("kd_depth_core.models.models_cli", "list registered models with parameters and GFLOPs"),
    "train": ("kd_depth_core.train.train_cli", "train a teacher or baseline (any registered task) from a YAML config"),
    "distill": ("kd_depth_core.distill.distill_cli",
                "distil a teacher into a student (kd_ms_dpt, lumde, adu_depth, xdistill, distill_foundation) "
                "from a YAML config"),
    "evaluate": ("kd_depth_core.eval.evaluate_cli",
                 "score a model on KITTI / NYUv2 / Make3D / DrivingStereo or our sequences"),
    "compare": ("kd_depth_core.eval.compare_cli", "several models (or saved results.json) in one table and one figure"),
    "predict": ("kd_depth_core.inference.predict_cli",
                "depth for images, folders and videos: 16-bit PNG (mm), .npy, colour, PLY"),
    "export": ("kd_depth_core.inference.export_cli",
               "export a released model to ONNX or TorchScript and check it against PyTorch"),
    "export-foreign": ("kd_depth_core.inference.export_foreign",
                       "export a model as a relative-disparity ONNX + model card (a stand-in foundation teacher)"),
    "bench": ("kd_depth_core.inference.bench_cli",
              "inference latency, throughput and memory per model x backend x size x batch"),
}


def all_commands() -> dict[str, tuple[str, str]]:
    """:data:`COMMANDS` plus those registered by installed packages (group :data:`PLUGIN_GROUP`).

    A plugin table that fails to load, is not a mapping of (module, help) pairs, or reuses a core
    command's name is skipped with a warning naming the entry point.
    """
    commands = dict(COMMANDS)
    for point in sorted(entry_points(group=PLUGIN_GROUP), key=lambda p: p.name):
        try:
            table = point.load()
            items = [(str(name), (str(module), str(text))) for name, (module, text) in dict(table).items()]
        except Exception as error:  # noqa: BLE001 - a broken plugin must not break the other commands
            logging.getLogger("kd_depth_core.cli").warning("entry point %s (%s = %s) skipped: %s", PLUGIN_GROUP,
                                                           point.name, point.value, error)
            continue
        for name, row in items:
            if name in COMMANDS:
                logging.getLogger("kd_depth_core.cli").warning("entry point %s (%s): command %r is a kd-depth core "
                                                               "command; skipped", PLUGIN_GROUP, point.name, name)
                continue
            commands.setdefault(name, row)
    return commands


def _top_parser(commands: dict[str, tuple[str, str]]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kd-depth",
        description="Self-supervised depth training, distillation, evaluation and export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<14}{text}" for name, (_, text) in commands.items())
        + "\n\nRun `kd-depth <command> --help` for a command's options.",
    )
    parser.add_argument("command", choices=sorted(commands), metavar="command", help="one of the commands below")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = all_commands()
    top = _top_parser(commands)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    if argv[0] in ("-V", "--version"):
        from kd_depth_core import __version__

        print(f"kd-depth {__version__}")
        return 0
    name = argv[0]
    if name not in commands:
        top.error(f"unknown command {name!r}; choose from: {', '.join(sorted(commands))} (commands of other "
                  f"packages register through the {PLUGIN_GROUP!r} entry point group: reinstall with `make setup`)")
    module_name, text = commands[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"kd-depth {name}", description=text)
    module.add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv[1:])
    args.prog = parser.prog
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one error path; unexpected errors still re-raise
        message = explain_error(error, _OUTPUT_SETTING.get(name, "--out"))
        if message is None or args.debug:
            raise
        print(f"{parser.prog}: {message} (run with --debug for the traceback)", file=sys.stderr)
        return 2


def explain_error(error: BaseException, out: str = "--out") -> str | None:
    """One line naming the file, field or flag and the fix, or None for an unexpected error.

    ``out`` is what sets the command's output path (``--out``; ``train.out_dir`` for train and distill).
    """
    name = getattr(error, "filename", None)
    if isinstance(error, PermissionError):
        if name and os.path.exists(name) and not os.access(name, os.R_OK):
            return f"permission denied reading {name}; make it readable for this user (chmod / chown)"
        return f"permission denied: {name or error}; choose a path you can write (e.g. {out} under your home)"
    if isinstance(error, FileExistsError):
        return f"{name or error} already exists; choose another {out} or remove it"
    if isinstance(error, IsADirectoryError):
        return f"{name or error} is a folder, a file was expected; name a file"
    if isinstance(error, NotADirectoryError):
        return f"{name or error}: a part of this path is a file, not a folder; choose another {out}"
    if isinstance(error, FileNotFoundError):
        return f"not found: {name or error}; check the path"
    if isinstance(error, OSError) and name:
        return f"{name}: {error.strerror or error}"
    if type(error).__name__ in _KNOWN_ERRORS:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, RuntimeError) and "Unknown model" in str(error):  # timm: unknown backbone
        return f"{error}; see `timm.list_models()` for backbone names (model.kwargs.backbone=...)"
    return None


# Project errors whose message already names the file/field and the fix.
_KNOWN_ERRORS = {"ConfigError", "CheckpointError", "ModelFileError", "SequenceError", "MissingFilesError",
                 "GroupingError", "CacheError", "ParameterError", "EmptyMaskError", "ModelConfigError"}

# The setting that names a command's output path, where it is not --out.
_OUTPUT_SETTING = {"train": "train.out_dir", "distill": "train.out_dir"}


if __name__ == "__main__":
    sys.exit(main())
