"""Command line: argument parsing only; every command calls one library function."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from kdbench.errors import KdbenchError
from kdbench.models.families import ARCHS  # noqa: F401  (torch-free: the CLI parses before importing torch)

ARCH_HELP = "a torchvision name (resnet18, mobilenet_v3_large, efficientnet_b0, ...: `kdbench models` lists them)"
PRESETS = ("quick", "paper")
PRESET_HELP = ("quick: offline CPU smoke benchmark (40/32 px, from scratch); paper: SCKD's setting (256/224 px, "
               "500 epochs, ImageNet trunk)")

# OSErrors a user fixes on their side (space, permissions, read-only disks, links, files in the way)
_FILE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENOTDIR, errno.EEXIST,
                errno.EISDIR, errno.ENAMETOOLONG, getattr(errno, "EDQUOT", errno.ENOSPC)}


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, [], argparse.SUPPRESS)
                or action.option_strings == [] or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)"


class _SubParser(argparse.ArgumentParser):
    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")


def _add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, metavar="imagenet|none|PATH",
                   help="initial trunk weights: imagenet (torchvision, downloaded once), none (from scratch), "
                        "a saved state_dict PATH, or ARCH=PATH,... per architecture (default: the preset's)")


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="folder of scene folders (default: $KDBENCH_DATA or ./datasets)")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="override a method hyperparameter, e.g. --set sckd.sigma=50 (repeatable)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load KD methods from a Python file (repeatable)")


def _add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast on GPUs that support it, fp16 + loss scaling on older GPUs, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the student (recorded in the config)")
    p.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                   help="save when this many seconds passed since the last save (also at the end and on "
                        "SIGINT/SIGTERM; default 60)")


def _add_preset_overrides(p: argparse.ArgumentParser, run: bool) -> None:
    """Flags for the preset fields the command has no flag for yet (default: the preset's value)."""
    from kdbench.config import BN_STATS, HEAD_INITS, LR_SCHEDULES, NORMALIZATIONS, POSE_LOSS_FORMS  # torch-free

    if run:
        p.add_argument("--lr", type=float, default=None, help="Adam learning rate of teachers and students "
                       "(default: the preset's, per role)")
        for role in ("teacher", "student"):
            p.add_argument(f"--{role}-epochs", type=int, default=None, help=f"{role}s' epochs (wins over --epochs)")
            p.add_argument(f"--{role}-batch-size", type=int, default=None,
                           help=f"{role}s' batch size (wins over --batch-size)")
            p.add_argument(f"--{role}-lr", type=float, default=None, help=f"{role}s' learning rate (wins over --lr)")
        p.add_argument("--beta", type=float, default=None, help="quaternion loss weight (default: the preset's "
                       "or the scene's)")
    else:
        p.add_argument("--load-size", type=int, default=None,
                       help="short side of the cached images (default: the preset's)")
        p.add_argument("--crop", type=int, default=None, help="crop size fed to the networks (default: the preset's)")
    p.add_argument("--weight-decay", type=float, default=None, help="Adam weight decay (default: the preset's)")
    p.add_argument("--adam-eps", type=float, default=None, help="Adam's eps (default: the preset's)")
    p.add_argument("--pose-loss", default=None, choices=POSE_LOSS_FORMS,
                   help="sum: ||x - x'||^2 + beta ||q - q'||^2; mean: SCKD's nn.MSELoss form (default: the preset's)")
    p.add_argument("--head-init", default=None, choices=HEAD_INITS,
                   help="pose head initialisation: torchvision or sckd (default: the preset's)")
    p.add_argument("--normalize", default=None, choices=NORMALIZATIONS,
                   help="input: imagenet (mean/std), mean ((pixel - train mean image) / 255), sckd (pixel - train "
                        "mean image, 0-255 scale) (default: the preset's)")
    p.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                   help="constant or cosine (to 0 by the last epoch) (default: the preset's)")
    p.add_argument("--bn-stats", default=None, choices=("auto", *BN_STATS),
                   help="BatchNorm statistics of the scored model: running (training's running averages) or "
                        "recompute (over the training frames after the last epoch); auto (default): recompute "
                        "for families with a slow BatchNorm momentum (mobilenet_v3, mnasnet)")


def build_parser() -> argparse.ArgumentParser:
    """The kdbench argument parser."""
    from kdbench import __version__

    parser = argparse.ArgumentParser(prog="kdbench", formatter_class=_HelpFormatter,
                                     description="Knowledge-distillation benchmark for camera pose regression "
                                     "(PoseNet teachers and students).")
    parser.add_argument("--version", action="version", version=f"kdbench {__version__}")
    # Every subcommand shows its defaults.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubParser)

    scenes = sub.add_parser("scenes", help="scene catalog, downloads, synthetic scenes")
    ssub = scenes.add_subparsers(dest="scenes_command", metavar="ACTION", required=True, parser_class=_SubParser)
    p = ssub.add_parser("list", help="every scene: family, frame counts, on disk, prepared, size")
    p.add_argument("--splits", action="store_true",
                   help="also the validation split of each scene on disk (as `kdbench scenes splits`)")
    _add_data_root(p)
    p = ssub.add_parser("splits", help="train / validation / gap / test frames of scenes on disk, and what is held out")
    p.add_argument("names", nargs="*", default=["all"], help="scene names or groups (default: every scene on disk)")
    p.add_argument("--rule", default=None, help="validation rule, e.g. holdout:fraction=0.2,gap=0.05 (the default)")
    _add_data_root(p)
    p = ssub.add_parser("download", help="fetch, verify, unpack and prepare real scenes")
    p.add_argument("names", nargs="+", help="scene names or groups (cambridge, 7scenes, real)")
    p.add_argument("--url", default=None, help="download from this URL instead of the catalog's (one scene)")
    _add_data_root(p)
    _add_quiet(p)
    p = ssub.add_parser("synth", help="render an offline synthetic scene in a real dataset layout")
    p.add_argument("name", help="SynthRoom (7-Scenes layout) or SynthStreet (Cambridge layout)")
    p.add_argument("--frames", type=int, default=None, help="frames per sequence (default 100; 6 sequences)")
    p.add_argument("--size", default="160x120", help="image size WxH")
    p.add_argument("--seed", type=int, default=0, help="random seed of the rendering (textures, trajectories)")
    _add_data_root(p)
    _add_quiet(p)
    p = ssub.add_parser("prepare", help="verify or (re)build the decoded caches; print the data fingerprints")
    p.add_argument("names", nargs="+", help="scene names or groups")
    p.add_argument("--load-size", type=int, default=None, help="cache short side in pixels (default: the preset's)")
    p.add_argument("--preset", default="quick", choices=PRESETS, help="whose load size to use")
    _add_data_root(p)
    _add_quiet(p)

    p = sub.add_parser("train", help="train (and evaluate) one teacher or student")
    p.add_argument("--scene", required=True, help="scene name (see `kdbench scenes list`)")
    p.add_argument("--arch", default="resnet18", metavar="ARCH", help=f"network trunk: {ARCH_HELP}")
    p.add_argument("--method", default="baseline", help="KD method (see `kdbench methods`)")
    p.add_argument("--teacher", default=None, metavar="CHECKPOINT", help="teacher checkpoint for KD methods")
    p.add_argument("--preset", default="quick", choices=PRESETS, help=PRESET_HELP)
    p.add_argument("--role", default=None, choices=["teacher", "student"],
                   help="which preset epochs to use (default: student when --teacher is given)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: the preset's)")
    p.add_argument("--beta", type=float, default=None, help="quaternion loss weight (default: the scene's)")
    p.add_argument("--learn-beta", action="store_true", help="Kendall 2017 learned loss weighting")
    _add_preset_overrides(p, run=False)
    _add_weights(p)
    p.add_argument("--seed", type=int, default=0, help="seeds Python, NumPy and torch")
    p.add_argument("--eval-split", default="test", choices=["test", "val"],
                   help="val: train on the training split minus its validation part and score on that part "
                        "(`kdbench scenes splits`); a KD student needs a teacher trained the same way")
    p.add_argument("--runs-dir", default="runs", help="runs folder; the job is recorded in its results store")
    p.add_argument("--out", default=None, help="run folder (default: RUNS_DIR/train/<scene>/<arch>-<method>-"
                   "seed<seed>-<hash>)")
    _add_device(p)
    _add_training_args(p)
    _add_method_args(p)
    _add_data_root(p)
    _add_quiet(p)

    p = sub.add_parser("evaluate", help="evaluate a saved checkpoint on a scene's test split")
    p.add_argument("checkpoint", help="a checkpoint.pt written by kdbench train or run")
    p.add_argument("--scene", default=None, help="scene to evaluate on (default: the one the checkpoint was "
                   "trained on; another one needs --other-scene)")
    p.add_argument("--other-scene", action="store_true",
                   help="allow --scene to differ from the checkpoint's training scene (cross-scene test)")
    p.add_argument("--out", default=None, help="where to write metrics.json and predictions.csv "
                   "(default: beside the checkpoint, eval-<scene>/)")
    _add_device(p)
    _add_data_root(p)
    _add_quiet(p)

    p = sub.add_parser("methods", help="registered KD methods with their hyperparameters")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load KD methods from a Python file (repeatable)")

    p = sub.add_parser("run", help="benchmark methods x scenes x seeds (teachers first), then print leaderboard")
    p.add_argument("--methods", default="core",
                   help="comma-separated methods, variants and groups; each variant is its own leaderboard row: "
                        "NAME:KEY=VALUE[:KEY=VALUE...] (list values joined with +, e.g. sckd:sc_layers=2+3), "
                        "e.g. baseline,sckd,sckd:sigma=0,sckd:alpha=0; groups: core (baseline, vanilla, attentive, "
                        "similarity, sckd), all (every registered method), ablations "
                        "(sckd, sckd:sigma=0 = hint only, sckd:alpha=0 = SC only). --set METHOD.KEY=VALUE is "
                        "the base of every row of METHOD; a variant's own keys win (see `kdbench methods`)")
    p.add_argument("--scenes", default="synthetic", help="scene names or groups, comma-separated")
    p.add_argument("--seeds", default=None,
                   help="a count (3: seeds 0, 1, 2) or a list (0,5,7), one teacher per seed; significance needs at "
                        "least 2 seeds (default 3; see `kdbench report --seeds-needed 5%%`)")
    p.add_argument("--teacher-seeds", default=None, metavar="N",
                   help="crossed design (instead of --seeds): N teachers per scene (a count or a list) ...")
    p.add_argument("--student-seeds", default=None, metavar="M",
                   help="... times M student seeds of every KD method (the baseline on the M seeds), so the "
                        "report can say how much of a row's variance is the teacher's")
    p.add_argument("--teacher-arch", default="resnet34", metavar="ARCH", help=f"trunk of the teachers: {ARCH_HELP}")
    p.add_argument("--student-arch", default="resnet18", metavar="ARCH[,ARCH...]",
                   help="trunks of the students, comma-separated: the same methods run for each, against one "
                        "teacher per scene and seed, each against its own baseline")
    p.add_argument("--preset", default="quick", choices=PRESETS, help=PRESET_HELP)
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (teachers and students)")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--load-size", type=int, default=None,
                   help="short side of the cached images (default: the preset's)")
    p.add_argument("--crop", type=int, default=None, help="crop size fed to the networks (default: the preset's)")
    _add_preset_overrides(p, run=True)
    _add_weights(p)
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: jobs one after another in this process; ray: Ray tasks (pip install kdbench[ray])")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--runs-dir", default="runs", help="runs folder: checkpoints and the results store")
    _add_device(p)
    p.add_argument("--config", default=None, metavar="FILE.toml",
                   help="read options from a TOML benchmark definition (keys are option names; flags given "
                        "here override them)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (jobs, which are reused, images to process) and exit without training")
    p.add_argument("--jobs-per-gpu", default="auto", metavar="N",
                   help="independent jobs at once on each visible GPU (default auto: from model and batch memory; "
                        "on CPU, jobs at once, 2 by default)")
    p.add_argument("--rebuild-store", action="store_true",
                   help="move a damaged results store aside and rebuild it from the run folders first")
    p.add_argument("--hparams", default=None, metavar="TUNED.toml",
                   help="train the values `kdbench tune` chose (its tuned.toml) for every row it tuned; "
                        "NAME:tuned in --methods adds such a row beside the others (file default RUNS_DIR/tuned.toml)")
    _add_training_args(p)
    _add_method_args(p)
    _add_data_root(p)
    _add_quiet(p)
    _add_tune_parser(sub, p)

    p = sub.add_parser("runs", help="list jobs in the results store")
    p.add_argument("--runs-dir", default="runs", help="runs folder holding results.sqlite")
    p.add_argument("--status", default=None, choices=["pending", "running", "done", "failed", "superseded"],
                   help="only jobs with this status")

    p = sub.add_parser("report", help="leaderboards from the results store")
    p.add_argument("--runs-dir", default="runs", help="runs folder holding results.sqlite")
    p.add_argument("--scenes", default=None, help="restrict to these scenes or groups")
    p.add_argument("--preset", default=None, help="show this preset's results (default: the latest run's)")
    p.add_argument("--format", default="markdown", choices=["markdown", "terminal", "csv", "json", "html"],
                   help="output format (html: a self-contained page in the --out folder)")
    p.add_argument("--out", default=None, help="write to FILE instead of standard output (html: a folder, "
                   "default site/)")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="also write plots there: performance profiles with bootstrap bands, critical-difference "
                        "diagrams (needs the plots extra)")
    p.add_argument("--table", default="accuracy", choices=["accuracy", "efficiency", "significance", "claims"],
                   help="the table --format csv writes (one table per file)")
    p.add_argument("--rope", default="2%", metavar="PCT",
                   help="region of practical equivalence: a change of the error within ±PCT does not matter "
                        "(verdicts better / practically equivalent / worse / undecided)")
    p.add_argument("--seeds-needed", default=None, metavar="PCT",
                   help="print how many seeds per scene a change of PCT (e.g. 5%%) needs for 80%% power at the "
                        "observed noise, per row and metric, and exit")

    p = sub.add_parser("models", help="supported backbone families, with each stage tap's channels and stride")
    p.add_argument("--archs", default=None, help="comma-separated architectures (default: each family's smallest)")
    p.add_argument("--crop", type=int, default=224, help="input size for the map sizes shown")

    p = sub.add_parser("profile", help="params, size, FLOPs, latency (torch, onnxruntime)")
    p.add_argument("--archs", default="resnet18,resnet34,resnet50",
                   help="comma-separated trunks to measure; `results`: every architecture in the results store")
    p.add_argument("--backends", default="torch,onnxruntime", help="comma-separated: torch, onnxruntime")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where latency is measured")
    p.add_argument("--batch", type=int, default=1, help="batch size of the latency measurement")
    p.add_argument("--crop", type=int, default=224, help="input size (square crop) in pixels")
    p.add_argument("--runs", type=int, default=50, help="timed runs (at least 50)")
    p.add_argument("--export", default=None, metavar="DIR", help="write the ONNX models there")
    p.add_argument("--onnx", default=None, metavar="FILE", help="measure this ONNX file with onnxruntime only")
    p.add_argument("--runs-dir", default="runs", help="record results in this results store")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the rows as JSON (for kdbench import)")
    p.add_argument("--no-store", action="store_true", help="do not record in the results store")
    p.add_argument("--force", action="store_true", help="record latencies even when other work on the machine "
                   "disturbed them (flagged in the note)")

    p = sub.add_parser("export", help="trained models (checkpoint, run folder or job id) to ONNX, parity-checked")
    p.add_argument("target", nargs="?", default=None, help="a checkpoint.pt, a run folder, or a job id in the store")
    p.add_argument("--all-students", action="store_true", help="export every student the leaderboard shows")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="model format (default: onnx)")
    p.add_argument("--out", default=None, help="FILE.onnx, or a folder (default onnx/)")
    p.add_argument("--runs-dir", default="runs", help="runs folder holding results.sqlite (for job ids)")
    p.add_argument("--scenes", default=None, help="with --all-students: only these scenes or groups")
    p.add_argument("--preset", default=None, help="with --all-students: this preset's (default: the latest run's)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the exported model's input")

    p = sub.add_parser("import", help="merge profile rows (JSON from `kdbench profile --out`) into a store")
    p.add_argument("file", help="JSON file written by `kdbench profile --out`")
    p.add_argument("--runs-dir", default="runs", help="runs folder holding results.sqlite")
    return parser


def _add_tune_parser(sub: argparse._SubParsersAction, run: argparse.ArgumentParser) -> None:
    """`kdbench tune`: run's options (copied, own defaults) plus the search's."""
    import copy

    p = sub.add_parser("tune", help="search every row's hyperparameters on the validation split (Optuna), "
                       "equal trials per row; writes tuned.toml")
    for action in run._actions:
        # not the crossed design's seeds either: a tune trains plain --seeds (they would be silently ignored)
        if action.option_strings and action.dest not in ("help", "config", "dry_run", "rebuild_store", "hparams",
                                                          "teacher_seeds", "student_seeds"):
            copied = copy.copy(action)  # argparse has no public way to share options between parsers
            if copied.dest == "seeds":  # run's help names run's default (3)
                copied.help = "seeds of every trial: a count (2: seeds 0, 1) or a list (0,5,7) (default 1)"
            p._add_action(copied)
    p.set_defaults(methods="baseline,sckd", scenes="SynthRoom", seeds="1")
    p.add_argument("--trials", type=int, default=4, help="trials per row and scene group (every row the same)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (TPE): the same seed picks the same values")
    p.add_argument("--study", default="tune", help="study name: RUNS_DIR/tune/STUDY.sqlite (resumed when it exists)")
    p.add_argument("--prune", action="store_true", help="Optuna median pruning after each scene of a group")
    p.add_argument("--select", default="group", choices=["group", "scene"],
                   help="choose once per scene group (geometric mean over its scenes) or per scene")
    p.add_argument("--out", default=None, help="tuned file to write (default RUNS_DIR/tuned.toml)")


# command -> (module, function). Modules are imported only when their command runs: `profile --onnx`
# must work where only onnxruntime is installed, so nothing on its path may import torch.
_HANDLERS = {
    "train": ("kdbench.runners.commands", "cmd_train"),
    "evaluate": ("kdbench.runners.commands", "cmd_evaluate"),
    "run": ("kdbench.runners.commands", "cmd_run"),
    "tune": ("kdbench.runners.tune", "cmd_tune"),
    "runs": ("kdbench.runners.commands", "cmd_runs"),
    "methods": ("kdbench.methods.commands", "cmd_methods"),
    "report": ("kdbench.reports.commands", "cmd_report"),
    "import": ("kdbench.reports.commands", "cmd_import"),
    "profile": ("kdbench.profile", "cmd_profile"),
    "models": ("kdbench.models.commands", "cmd_models"),
    "export": ("kdbench.export", "cmd_export"),
}


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (e.g. "run"), whose actions define the options a config file may set."""
    for action in parser._subparsers._group_actions:  # argparse keeps them here; there is no public accessor
        if name in action.choices:
            return action.choices[name]
    raise KeyError(name)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "scenes":
        module, func = "kdbench.scenes.commands", f"cmd_{args.scenes_command}"
    elif args.command == "profile" and args.onnx:
        module, func = "kdbench.profile_onnx", "cmd_profile_onnx"
    else:
        module, func = _HANDLERS[args.command]
    return getattr(importlib.import_module(module), func)(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kdbench` console script."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "run" and args.config:
            from kdbench.runners.benchconfig import apply_config_file

            args = apply_config_file(subparser(parser, "run"), argv[argv.index("run") + 1:], args.config)
            args.command = "run"
        return _dispatch(args) or 0
    except KdbenchError as exc:
        message = str(exc)
        if getattr(args, "config_keys", None):
            from kdbench.runners.benchconfig import blame_config

            message = blame_config(message, args)
        print(f"kdbench: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in _FILE_ERRNOS:
            raise
        from kdbench.fileio import write_error

        # A write (or read) that no command translated: still one line naming the file and the fix.
        print(f"kdbench: error: {write_error(exc.filename or '?', exc, verb='use')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdbench: interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
