"""``swudi-lab`` command line: one subcommand per task, flags of ``merge`` built from the registry.

    swudi-lab merge --base BASE --experts E1 E2 ... --method swudi [--t 1300] [--ratio 0.65]
                    [--device auto] [--dtype float32] --out merged.safetensors [--report report.json]
    swudi-lab merge ... --method swudi --preset clip-vit-b32   (a model family's published settings)
    swudi-lab merge --base openai/clip-vit-base-patch32 --experts DIR_OR_ID ... --method swudi --out OUT_DIR
                    [--max-shard-size 2GB] [--routing hf_clip]   (an HF model directory out)
    swudi-lab methods
    swudi-lab presets
    swudi-lab zoo build [--seeds 0 1 2] [--pretrain]      (the offline ViT expert zoo)
    swudi-lab zoo build --root DIR --lr 3e-4 [--steps N] [--head-scale S] [--trainable attention]
                                                         (a fine-tuning variant, in its own root)
    swudi-lab demo [--seeds 0] [--quick] [--fresh] | --toy (make demo: seed 0, a few minutes)
    swudi-lab study [--seeds 0 1 2] [--quick] [--fresh]   (make study: three seeds, every sweep)
    swudi-lab bench cost [merge_cost.py arguments]       (time and peak memory per method)
    swudi-lab bench clip [--standin] [--device cuda]     (the paper's CLIP ViT-B/32 TA8 benchmark)
    swudi-lab convert --to timm|hf IN OUT [--config config.json] [--prefix vision_model.|'']
                                                         (HF CLIP vision <-> timm CLIP ViT; needs [hub])

Every method parameter of :data:`swudi_lab.merge.METHODS` is a flag (``rank_rule`` ->
``--rank-rule``); only the chosen method's flags are accepted, an irrelevant one given
explicitly is an error. Errors print one line naming the tensor, expert or file and exit non-zero.

Adding a subcommand: write ``_add_<name>(subparsers)`` and ``_cmd_<name>(args) -> int`` and list it
in :data:`SUBCOMMANDS`. ``python -m swudi_lab.cli`` works like ``swudi-lab``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import swudi_lab  # noqa: F401  (torchvision shim before any timm import)
from swudi_lab.config import paths

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
    from swudi_lab.config import PRESETS
    from swudi_lab.merge import METHODS, ROUTING
    from swudi_lab.merge.io import DEFAULT_MAX_SHARD_SIZE

    p = sub.add_parser(
        "merge",
        allow_abbrev=False,  # --rank must not silently mean --rank-rule
        help="merge a base and N fine-tuned experts into one checkpoint",
        description="Merge a base and N experts. A checkpoint is a .safetensors file, a .pt/.pth/.bin file "
                    "(read weights-only), 'timm:NAME@PATH' (a timm model with a local weights file), a Hugging Face "
                    "model directory (config.json with model.safetensors, or shards with "
                    "model.safetensors.index.json), or a hub id such as openai/clip-vit-base-patch32 (fetched "
                    "into the HF cache: safetensors and json files only; needs swudi_lab[hub]). Experts are "
                    "matched on the base's keys, with or without the vision_model. prefix; keys only the base "
                    "has (a CLIPModel's text tower) are copied. "
                    "See `swudi-lab methods` for methods, their parameters and defaults.",
    )
    p.add_argument("--base", required=True, help="base checkpoint: file, timm: spec, HF model directory or hub id")
    p.add_argument("--experts", required=True, nargs="+",
                   help="expert checkpoints (same kinds; same tensors and shapes as the base)")
    p.add_argument("--tasks", nargs="+", default=None,
                   help="task names of the experts (default: file stems, directory or repository names)")
    p.add_argument("--method", required=True, choices=list(METHODS), help="merge method")
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="published settings of a model family (see `swudi-lab presets`); flags given override them")
    p.add_argument("--out", required=True,
                   help="merged checkpoint: a .safetensors file, or, when the base is an HF model directory or hub "
                        "id, a directory path for an HF model directory (config.json, shards, index, "
                        "merge_report.json), written atomically")
    p.add_argument("--max-shard-size", default=None,
                   help=f"directory output: largest shard, e.g. 2GB, 500MB or bytes (default {DEFAULT_MAX_SHARD_SIZE}, "
                        "transformers' default)")
    p.add_argument("--routing", default=None, choices=list(ROUTING),
                   help="routing profile: which tensors get the solver, the mean, the base or stay heads "
                        "(default: detected from the base's keys)")
    p.add_argument("--report", default=None, help="per-layer report: report.json (+ report.csv)")
    p.add_argument("--heads-out", default=None, help="per-task heads file (default: <out stem>.heads.safetensors)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device (default auto)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="compute dtype (default float32)")
    p.add_argument("--head-pattern", default=None,
                   help="full-match regex of task-specific heads, kept per task (default: the routing profile's, "
                        "'head\\..*' for timm; '' for none)")
    p.add_argument("--include", nargs="+", default=None, help="full-match regexes of tensors to merge (default all)")
    p.add_argument("--exclude", nargs="+", default=None, help="full-match regexes of tensors to keep from the base")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="do not print the per-layer table")
    g = p.add_argument_group("method parameters (only the chosen method's; see `swudi-lab methods`)")
    for name, (param, owners) in _method_flags().items():
        help_ = f"{param.help} [{', '.join(owners)}]".replace("%", "%%")  # argparse formats help with %
        kw = dict(dest=f"param_{name}", default=argparse.SUPPRESS, help=help_)
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
    heads = {} if args.head_pattern is None else {"head_pattern": args.head_pattern or None}
    report = merge_files(
        args.base, args.experts, args.out, args.method,
        report_path=args.report, heads_path=args.heads_out, tasks=args.tasks,
        progress=not args.no_progress, device=args.device, dtype=args.dtype,
        include=args.include, exclude=args.exclude, preset=args.preset, routing=args.routing,
        max_shard_size=args.max_shard_size, **heads, **params,
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
    from swudi_lab.merge import describe_methods, describe_routing

    print(describe_methods(args.names or None), end="")
    print(describe_routing(), end="")
    return 0


def _add_presets(sub) -> None:
    sub.add_parser("presets", help="list the published settings per model family (--preset of merge)")


def _cmd_presets(args) -> int:
    from swudi_lab.merge import describe_presets

    print(describe_presets(), end="")
    return 0


# ----------------------------------------------------------------------------- zoo


def _add_zoo(sub) -> None:
    p = sub.add_parser("zoo", help="build, reuse or inspect the offline ViT expert zoo")
    p.add_argument("action", choices=["build", "info"], help="build: build or reuse; info: print manifests")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="expert seeds (default: 0, the shipped one)")
    p.add_argument("--root", default=None, help="zoo cache directory (default: $SWUDI_LAB_CACHE, else data/zoo of the checkout)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache verifies")
    p.add_argument("--pretrain", action="store_true",
                   help="first reproduce the pretrained base (7.6 min on one H200 with --device cuda; hours on a CPU) into --pretrained-out")
    p.add_argument("--pretrained-out", default=None,
                   help="where --pretrain writes (default: data/pretrained/reproduced; the shipped base in data/pretrained "
                        "is never overwritten)")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="--pretrain with this many steps instead of the recipe's 14000 (written as <name>_steps<N>)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--lr", type=float, default=None, help="variant: fine-tuning learning rate (default 2e-4; needs --root)")
    p.add_argument("--steps", type=int, default=None, help="variant: fine-tuning steps (default 400; needs --root)")
    p.add_argument("--head-scale", type=float, default=None,
                   help="variant: s in the heads' logits s*cos(f, p_k) (default 30; CLIP's is 100; needs --root)")
    p.add_argument("--trainable", choices=["all", "attention"], default=None,
                   help="variant: what fine-tuning moves (default all; needs --root)")
    p.add_argument("--head", choices=["prototype", "centered"], default=None,
                   help="variant: the fixed heads, s*cos(f, p_k) or the centred s*p_k.(f - mu)/rho (default prototype; needs --root)")
    p.add_argument("--pretrained", default=None,
                   help="variant: build the experts on another base: a name in data/pretrained or a .safetensors "
                        "path with its .json beside it, e.g. one written by --pretrain (needs --root)")


def _zoo_config(args):
    """The zoo config of ``swudi-lab zoo``: the default one, or a fine-tuning variant (``--lr``, ``--steps``,
    ``--head-scale``, ``--trainable``, ``--head``) or another base (``--pretrained``).

    A variant must live in its own ``--root``: built into the default cache it would replace the zoo
    that ``make demo`` and the notebooks use (and they would rebuild theirs on the next run).
    """
    from swudi_lab.zoo import ZooConfig
    from swudi_lab.zoo.build import _pretrained_paths

    names = ("lr", "steps", "head_scale", "trainable", "head")
    overrides = {k: getattr(args, k, None) for k in names if getattr(args, k, None) is not None}
    base = getattr(args, "pretrained", None)
    if not overrides and base is None:
        return ZooConfig()
    if args.root is None:
        raise ValueError("a variant (--lr, --steps, --head-scale, --trainable, --head, --pretrained) needs its own "
                         "--root, e.g. --root data/zoo_variants/lr3e-4")
    if any(overrides.get(k, 1) <= 0 for k in ("lr", "steps", "head_scale")):
        raise ValueError(f"--lr, --steps and --head-scale must be positive, got {overrides}")
    config = ZooConfig()
    if base is not None:
        missing = [str(p) for p in _pretrained_paths(base) if not p.is_file()]
        if missing and not getattr(args, "pretrain", False):  # with --pretrain it may be the base about to be written
            raise ValueError(f"--pretrained {base}: {', '.join(missing)} not found")
        config = replace(config, pretrained=base)
    return replace(config, finetune=replace(config.finetune, **overrides))


def _cmd_zoo(args) -> int:
    from swudi_lab.zoo import build_zoo, load_zoo
    from swudi_lab.zoo.build import DEFAULT_PRETRAINED, ZooCacheError, build_pretrained

    if args.action == "info":
        for seed in args.seeds:
            try:
                zoo = load_zoo(args.root, seed)
            except ZooCacheError as e:  # a one-line error, like every other bad input
                raise ValueError(f"{e} (build it with: swudi-lab zoo build --seeds {seed})") from None
            print(zoo)
            print(json.dumps(zoo.manifest.get("accuracy", {}), indent=1))
        return 0
    config = _zoo_config(args)  # a bad variant fails here, before any long run
    if args.pretrain:
        from swudi_lab.zoo.train import PretrainRecipe

        recipe, name = PretrainRecipe(), DEFAULT_PRETRAINED
        if args.pretrain_steps is not None:
            if args.pretrain_steps <= 0:
                raise ValueError(f"--pretrain-steps must be positive, got {args.pretrain_steps}")
            recipe, name = replace(recipe, steps=args.pretrain_steps), f"{name}_steps{args.pretrain_steps}"
        out = Path(args.pretrained_out) if args.pretrained_out else paths.pretrained_dir() / "reproduced"
        info = build_pretrained(name, recipe=recipe, out_dir=out, device=args.device)
        print(f"wrote {out / name}.safetensors (build experts on it with --pretrained and a --root)")
        shipped = paths.pretrained_dir() / f"{DEFAULT_PRETRAINED}.json"
        same = shipped.is_file() and json.loads(shipped.read_text()).get("sha256") == info["sha256"]
        print(f"pretrained base: val acc {info.get('val_accuracy', float('nan')):.2f}%, sha256 {info['sha256'][:16]}... "
              + ("(identical to the shipped base)" if same else "(differs from the shipped base: another recipe, or "
                 "float results that depend on the machine and thread count)"))
        print(f"the experts are built on {config.pretrained}")
    for seed in args.seeds:
        print(build_zoo(args.root, seed, config=config, force=args.force, device=args.device))
    return 0


# ----------------------------------------------------------------------------- demo


def _add_run_flags(p, seeds: list[int], out: str) -> None:
    """The flags ``demo`` and ``study`` share (one code path, :func:`swudi_lab.demo.run_demo`)."""
    p.add_argument("--seeds", type=int, nargs="+", default=seeds,
                   help=f"expert seeds (mean ± std over them; default {' '.join(map(str, seeds))})")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 test images per task, short sweeps")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--out", default=None, help=f"output directory (default: $SWUDI_LAB_RESULTS/{out}, else results/{out})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars: one line per phase, as in a log")
    p.add_argument("--fresh", action="store_true", help="recompute every seed (default: reuse cached seed results)")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the fast end-to-end merge of the shipped zoo seed, every method (make demo)",
                       description="Seed 0 of the offline zoo: every registry method at the paper's and the "
                                   "scale-matched settings on the whole test splits, accuracy vs kappa (one eigh per "
                                   "layer), the report. A few minutes on a CPU; `swudi-lab study` is the full run.")
    p.add_argument("--toy", action="store_true", help="the toy demo instead: a noisy test problem, every filter")
    _add_run_flags(p, [0], "demo")


def _add_study(sub) -> None:
    p = sub.add_parser("study", help="the full study: three expert seeds, every sweep, mean ± std (make study)",
                       description="The README's table: seeds 0, 1, 2 (seeds 1 and 2 fine-tuned on first use), WUDI's "
                                   "lr calibrated per seed, the step, kappa and ratio sweeps, each expert alone. "
                                   "Each seed's results are cached.")
    _add_run_flags(p, [0, 1, 2], "study")


def _run(args, profile: str) -> int:
    from swudi_lab.demo import run_demo
    from swudi_lab.merge.engine import resolve_device

    run_demo(seeds=tuple(args.seeds), profile=profile, out_dir=args.out, device=str(resolve_device(args.device)),
             quick=args.quick, progress=not args.no_progress, fresh=args.fresh)
    return 0


def _cmd_demo(args) -> int:
    if args.toy:
        from swudi_lab.toy import print_toy_demo

        print_toy_demo()
        return 0
    return _run(args, "demo")


def _cmd_study(args) -> int:
    return _run(args, "study")


# ----------------------------------------------------------------------------- bench


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: merge cost (cost), the paper's CLIP ViT TA8 benchmark (clip)")
    which = p.add_subparsers(dest="bench", required=True, metavar="{cost,clip}")
    cost = which.add_parser("cost", help="time and peak memory per method (benchmarks/merge_cost.py; source checkout)")
    cost.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for merge_cost.py (see --help there)")
    clip = which.add_parser(
        "clip", allow_abbrev=False,
        help="merge the published CLIP experts with every method and score them (needs swudi_lab[hub])",
        description="The paper's CLIP ViT benchmark: the base CLIP and eight experts (hub ids or local folders), "
                    "every registry method at the paper's settings, zero-shot heads, the test splits; our numbers "
                    "beside the published ones. Scores are cached per model, so a re-run resumes. --standin runs "
                    "the same pipeline offline on tiny models built here.")
    clip.add_argument("--family", default="clip-vit-base-patch32",
                      help="model family: clip-vit-base-patch32 (default), clip-vit-base-patch16, clip-vit-large-patch14")
    clip.add_argument("--base", default=None, help="base CLIP: hub id or local folder (default openai/<family>)")
    clip.add_argument("--experts", nargs="+", default=None, metavar="TASK=SOURCE",
                      help="expert per task (default tanganke/<family>_<task>)")
    clip.add_argument("--tasks", nargs="+", default=None, help="tasks (default the eight of TA8)")
    clip.add_argument("--data", nargs="+", default=None, metavar="TASK=SOURCE",
                      help="test set per task: hub dataset id or local folder in the hub's layout (default the task's)")
    clip.add_argument("--methods", nargs="+", default=None, help="registry methods (default all)")
    clip.add_argument("--preset", default="clip-vit-b32", help="settings of the methods (default %(default)s)")
    clip.add_argument("--n-test", type=int, default=None, help="seeded class-balanced test images per task (default all)")
    clip.add_argument("--seed", type=int, default=0, help="seed of the --n-test subsample")
    clip.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device (default auto)")
    clip.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    clip.add_argument("--out", default=None, help="results folder (default <results>/bench/clip)")
    clip.add_argument("--heads-cache", default=None, help="zero-shot heads cache (default ~/.cache/swudi_lab/heads)")
    clip.add_argument("--standin", nargs="?", const="", default=None, metavar="DIR",
                      help="run offline on the stand-in (built in DIR, default <results>/bench/standin)")
    clip.add_argument("--no-progress", action="store_true", help="no progress bars")


def _pairs(values, flag: str) -> dict | None:
    if values is None:
        return None
    out = {}
    for v in values:
        task, sep, source = v.partition("=")
        if not sep or not task or not source:
            raise ValueError(f"{flag} takes TASK=SOURCE pairs, got {v!r}")
        out[task] = source
    return out


def _cmd_bench(args) -> int:
    if args.bench == "clip":
        return _bench_clip(args)
    import importlib.util

    root = paths.checkout_root()
    script = root / "benchmarks" / "merge_cost.py" if root is not None else None
    if script is None or not script.is_file():
        raise FileNotFoundError(f"{script or 'benchmarks/merge_cost.py'} not found: the benchmark ships with the "
                                "source checkout, not the wheel")
    spec = importlib.util.spec_from_file_location("merge_cost", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(args.bench_args) or 0)


def _bench_clip(args) -> int:
    from swudi_lab.hub.bench import BenchConfig, format_bench_table, run_clip_bench, standin_config

    common = dict(family=args.family, methods=tuple(args.methods) if args.methods else None, preset=args.preset,
                  n_test=args.n_test, seed=args.seed, device=args.device, batch_size=args.batch_size, out=args.out)
    if args.tasks:
        common["tasks"] = tuple(args.tasks)
    if args.standin is not None:
        cfg = standin_config(args.standin or None, **common)
    else:
        cfg = BenchConfig(base=args.base, experts=_pairs(args.experts, "--experts"), data=_pairs(args.data, "--data"),
                          heads_cache=args.heads_cache, **common)
    result = run_clip_bench(cfg, progress=not args.no_progress)
    print(format_bench_table(result))
    return 0


# ----------------------------------------------------------------------------- convert


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert", allow_abbrev=False,
        help="convert HF CLIP vision checkpoints to timm CLIP ViTs and back",
        description="HF CLIP vision tower <-> timm CLIP ViT (swudi_lab.hub.convert). --to timm: IN is an HF "
                    "model directory (config.json + model.safetensors or shards) or a .safetensors file; OUT a "
                    ".safetensors file, with a .json sidecar naming the timm model and its kwargs. --to hf: IN a "
                    "timm .safetensors file; OUT a new directory (config.json + model.safetensors). Written "
                    "atomically, one tensor at a time.",
    )
    p.add_argument("--to", required=True, choices=["timm", "hf"], help="target format")
    p.add_argument("input", metavar="IN", help="HF directory / .safetensors (--to timm) or timm .safetensors (--to hf)")
    p.add_argument("output", metavar="OUT", help=".safetensors file (--to timm) or new directory (--to hf)")
    p.add_argument("--config", default=None,
                   help="HF config.json (a CLIPVisionConfig or CLIPConfig), checked against the weights: --to timm, "
                        "for a bare .safetensors IN (default: the directory's); --to hf, the config to write (default: "
                        "IN's sidecar). Without any, sizes are inferred from the shapes assuming OpenAI CLIP's head_dim "
                        "64, QuickGELU and eps 1e-5")
    p.add_argument("--prefix", default="vision_model.", choices=["vision_model.", ""],
                   help="--to hf key layout: 'vision_model.' (FusionBench experts, CLIPVisionModelWithProjection; "
                        "the only one with visual_projection) or '' (transformers 5 CLIPVisionModel); "
                        "default %(default)r")


def _cmd_convert(args) -> int:
    from swudi_lab.hub.convert import convert_checkpoint

    info = convert_checkpoint(args.input, args.output, args.to, config=args.config, prefix=args.prefix)
    extra = f", sidecar {info['sidecar']}, timm model {info['timm_model'] or 'VisionTransformer(custom)'}" \
        if args.to == "timm" else f", HF layout {info['hf_prefix'] or 'bare'}"
    print(f"wrote {info['out']} ({info['tensors']} tensors{extra}"
          + (f"; skipped {len(info['skipped'])} non-vision keys" if info["skipped"] else "") + ")")
    if info["assumed"]:
        print("assumed (no config.json): " + ", ".join(info["assumed"]))
    return 0


# ----------------------------------------------------------------------------- main

SUBCOMMANDS = {
    "merge": (_add_merge, _cmd_merge),
    "methods": (_add_methods, _cmd_methods),
    "presets": (_add_presets, _cmd_presets),
    "zoo": (_add_zoo, _cmd_zoo),
    "demo": (_add_demo, _cmd_demo),
    "study": (_add_study, _cmd_study),
    "bench": (_add_bench, _cmd_bench),
    "convert": (_add_convert, _cmd_convert),
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
