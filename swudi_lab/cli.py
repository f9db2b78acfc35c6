"""``swudi-lab`` command line: one subcommand per task, flags of ``merge`` built from the registry.

    swudi-lab merge --base BASE --experts E1 E2 ... --method swudi [--t 1300] [--ratio 0.65]
                    [--device auto] [--dtype float32] --out merged.safetensors [--report report.json]
    swudi-lab methods

Every method parameter of :data:`swudi_lab.merge.METHODS` is a flag (``rank_rule`` ->
``--rank-rule``); only the chosen method's flags are accepted, an irrelevant one given
explicitly is an error. Errors print one line naming the tensor, expert or file and exit non-zero.

Adding a subcommand: write ``_add_<name>(subparsers)`` and ``_cmd_<name>(args) -> int`` and list it
in :data:`SUBCOMMANDS`. ``python -m swudi_lab.cli`` works like ``swudi-lab``.
"""

from __future__ import annotations

import argparse
import sys

import swudi_lab  # noqa: F401  (torchvision shim before any timm import)

__all__ = ["main", "build_parser"]


# ----------------------------------------------------------------------------- merge


def _method_flags():
    """Every registry parameter once, as ``(Param, [method names])``."""
    from swudi_lab.merge import METHODS

    flags: dict[str, tuple] = {}
    for m in METHODS.values():
        for p in m.params:
            flags.setdefault(p.name, (p, []))[1].append(m.name)
    return flags


def _add_merge(sub) -> None:
    from swudi_lab.merge import DEFAULT_HEAD_PATTERN, METHODS

    p = sub.add_parser(
        "merge",
        allow_abbrev=False,  # --rank must not silently mean --rank-rule
        help="merge a base and N fine-tuned experts into one checkpoint",
        description="Merge a base and N experts (.safetensors, or .pt/.pth/.bin read weights-only; "
                    "'timm:NAME@PATH' for a timm model with a local weights file). "
                    "See `swudi-lab methods` for methods, their parameters and defaults.",
    )
    p.add_argument("--base", required=True, help="base checkpoint")
    p.add_argument("--experts", required=True, nargs="+", help="expert checkpoints (same keys and shapes as the base)")
    p.add_argument("--tasks", nargs="+", default=None, help="task names of the experts (default: file stems)")
    p.add_argument("--method", required=True, choices=list(METHODS), help="merge method")
    p.add_argument("--out", required=True, help="merged checkpoint (.safetensors), written atomically")
    p.add_argument("--report", default=None, help="per-layer report: report.json (+ report.csv)")
    p.add_argument("--heads-out", default=None, help="per-task heads file (default: <out stem>.heads.safetensors)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device (default auto)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="compute dtype (default float32)")
    p.add_argument("--head-pattern", default=DEFAULT_HEAD_PATTERN,
                   help="full-match regex of task-specific heads, kept per task (default %(default)r; '' for none)")
    p.add_argument("--include", nargs="+", default=None, help="full-match regexes of tensors to merge (default all)")
    p.add_argument("--exclude", nargs="+", default=None, help="full-match regexes of tensors to keep from the base")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="do not print the per-layer table")
    g = p.add_argument_group("method parameters (only the chosen method's; see `swudi-lab methods`)")
    for name, (param, owners) in _method_flags().items():
        kw = dict(dest=f"param_{name}", default=argparse.SUPPRESS, help=f"{param.help} [{', '.join(owners)}]")
        if param.type is bool:
            g.add_argument(param.flag, action="store_const", const=True, **kw)
        else:
            g.add_argument(param.flag, type=param.type if param.type is not str else str, metavar=name.upper(), **kw)


def _method_params(args) -> dict:
    """The method parameters given on the command line; ``ValueError`` for ones the method lacks."""
    from swudi_lab.merge import get_method

    m = get_method(args.method)
    accepted = {p.name for p in m.params}
    given = {k[len("param_"):]: v for k, v in vars(args).items() if k.startswith("param_")}
    wrong = sorted(set(given) - accepted)
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        ok = ", ".join(p.flag for p in m.params) or "none"
        raise ValueError(f"{flags} is not a parameter of method {m.name!r} (its parameters: {ok})")
    return given


def _cmd_merge(args) -> int:
    from swudi_lab.merge import merge_files

    params = _method_params(args)
    report = merge_files(
        args.base, args.experts, args.out, args.method,
        report_path=args.report, heads_path=args.heads_out, tasks=args.tasks,
        progress=not args.no_progress, device=args.device, dtype=args.dtype,
        head_pattern=args.head_pattern or None, include=args.include, exclude=args.exclude, **params,
    )
    if not args.quiet:
        print(report.to_table())
    print(f"wrote {args.out}" + (f", heads {report.meta['heads']}" if "heads" in report.meta else "")
          + (f", report {args.report}" if args.report else ""))
    return 0


# ----------------------------------------------------------------------------- methods


def _add_methods(sub) -> None:
    p = sub.add_parser("methods", help="list merge methods with their parameters and defaults")
    p.add_argument("names", nargs="*", help="only these methods")


def _cmd_methods(args) -> int:
    from swudi_lab.merge import describe_methods

    print(describe_methods(args.names or None), end="")
    return 0


# ----------------------------------------------------------------------------- main

SUBCOMMANDS = {
    "merge": (_add_merge, _cmd_merge),
    "methods": (_add_methods, _cmd_methods),
}
"""name -> (add_parser(subparsers), run(args) -> exit code)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swudi-lab", allow_abbrev=False, description="Spectral-regularization model merging (WUDI / SWUDI / SWUDI-A).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    """Run ``swudi-lab``; returns the exit code (0 ok, 1 bad input or failure, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse usage errors and --help
        return int(e.code or 0)
    try:
        return SUBCOMMANDS[args.command][1](args)
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"swudi-lab {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
