"""``hf-masking``: the paper's analyses of mask repos from the command line (also ``python -m hf_masking``).

    hf-masking inspect REPO [--json out.json] [--plot sparsity.png]
    hf-masking compare REPO_A REPO_B [--json out.json] [--plot dissimilarity.png]
    hf-masking evaluate REPO [REPO ...] --data dev.tsv [--ensemble all] [--label-map a=b,...]
    hf-masking interpolate --finetuned DIR --mask REPO --data dev.tsv [--from-pretrained] [--plot f.png]
    hf-masking embed --mask REPO [--finetuned DIR] --data dev.tsv [--plot f.png]

Each subcommand prints a table, writes its numbers with ``--json`` and a figure with ``--plot``
(matplotlib). The same numbers come from `hf_masking.analysis` in a notebook.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import analysis
from .ensemble import COMBINES
from .hub import source_problem


def _write_json(path: str | None, payload: Any) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(payload, handle, indent=2)
        print(f"wrote {path}")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from err
    return plt


def _read(repo: str, revision: str | None, token: str | None):
    from . import hub
    from .repo import read_folder

    folder, is_local = hub.resolve_repo(repo, revision, token)
    return read_folder(folder, follow_links=not is_local), folder


def _types_and_blocks(names: Sequence[str]) -> tuple[list[str], list[int]]:
    types, blocks = [], []
    for block, kind in analysis.block_layout(list(names)).values():
        if block is not None:
            types.append(kind) if kind not in types else None
            blocks.append(block) if block not in blocks else None
    return types, sorted(blocks)


def inspect_command(args: argparse.Namespace) -> None:
    stored, folder = _read(args.repo, args.revision, args.token)
    report = analysis.inspect_mask(stored, folder)
    revision = f"@{report.base_revision}" if report.base_revision else ""
    print(f"mask repo {args.repo}: a {report.head_class} mask on {report.base_model}{revision}")
    print(f"codec {report.codec}; {len(report.modules)} masked modules; global sparsity {report.global_sparsity:.4f}")
    sizes = report.bytes
    on_disk = sizes.get("repo_on_disk", sizes["mask_in_memory"])
    print(
        f"size: {on_disk:,} bytes on disk vs {sizes['full_model']:,} for the full model "
        f"({on_disk / sizes['full_model']:.4f})"
    )
    print(f"\n{'block':>5}  sparsity")
    for block, value in report.blocks.items():
        print(f"{block:>5}  {value:.4f}")
    print(f"\n{'module':<60} sparsity")
    for name, value in report.modules.items():
        print(f"{name:<60} {value:.4f}")
    _write_json(
        args.json,
        {
            "repo": args.repo,
            **report.to_dict(),
        },
    )
    if args.plot:
        plot_block_sparsity(report, args.repo, args.plot)


def plot_block_sparsity(report: analysis.MaskReport, title: str, path: str) -> None:
    """Bars per block, one bar per module type (as the paper's per-layer sparsity figures)."""
    plt = _pyplot()
    types, blocks = _types_and_blocks(list(report.modules))
    layout = analysis.block_layout(list(report.modules))
    figure, axes = plt.subplots(figsize=(max(6, len(blocks) * 0.9), 4))
    width = 0.8 / max(len(types), 1)
    for i, kind in enumerate(types):
        values = []
        for block in blocks:
            matches = [v for n, v in report.modules.items() if layout[n] == (block, kind)]
            values.append(matches[0] if matches else math.nan)
        axes.bar([b + (i - (len(types) - 1) / 2) * width for b in blocks], values, width, label=kind)
    axes.set_xticks(blocks)
    axes.set_xlabel("transformer block")
    axes.set_ylabel("fraction of weights masked out")
    axes.set_title(f"Sparsity per block and module: {os.path.basename(title.rstrip('/'))}")
    axes.legend(fontsize="small", ncol=2, title="module")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"wrote {path}")


def compare_command(args: argparse.Namespace) -> None:
    (a, _), (b, _) = _read(args.repo_a, args.revision, args.token), _read(args.repo_b, args.revision, args.token)
    values = analysis.dissimilarity(a, b)
    skipped = sorted((set(a.masks) | set(b.masks)) - set(values))
    print(f"masks A = {args.repo_a}, B = {args.repo_b}")
    print("dissimilarity s = |M_A - M_B|_1 / (|M_A - M_A,init|_1 + |M_B - M_B,init|_1)")
    print(f"\n{'module':<60} s")
    for name, value in values.items():
        print(f"{name:<60} {'undefined (neither moved)' if value is None else f'{value:.4f}'}")
    if skipped:
        print(f"left out (head layers only one mask has, or of another shape): {', '.join(skipped)}")
    defined = [v for v in values.values() if v is not None]
    if defined:
        print(f"\nmean over modules: {sum(defined) / len(defined):.4f}")
    _write_json(args.json, {"repo_a": args.repo_a, "repo_b": args.repo_b, "dissimilarity": values, "left_out": skipped})
    if args.plot:
        plot_dissimilarity(values, f"{args.repo_a} vs {args.repo_b}", args.plot)


def plot_dissimilarity(values: dict[str, float | None], title: str, path: str) -> None:
    """A blocks x module-type heatmap of s, as the paper's Figure 5."""
    plt = _pyplot()
    types, blocks = _types_and_blocks(list(values))
    grid = [[math.nan] * len(blocks) for _ in types]
    layout = analysis.block_layout(list(values))
    for name, value in values.items():
        block, kind = layout[name]
        if block is not None and value is not None:
            grid[types.index(kind)][blocks.index(block)] = value
    figure, axes = plt.subplots(figsize=(max(5, len(blocks) * 0.7), max(3, len(types) * 0.5)))
    image = axes.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
    axes.set_xticks(range(len(blocks)), [str(b) for b in blocks])
    axes.set_yticks(range(len(types)), types)
    axes.set_xlabel("transformer block")
    axes.set_ylabel("module")
    axes.set_title(f"Mask dissimilarity s: {title}", fontsize="medium")
    figure.colorbar(image, ax=axes, label="s (0: same mask)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"wrote {path}")


def _load_masked(args: argparse.Namespace, repo: str):
    from .model import MaskedModel

    base_model = _model_source(args.base_model, "--base_model")
    return MaskedModel.from_pretrained(repo, args.revision, args.token, base_model=base_model)


def _model_source(value: str | None, flag: str) -> str | None:
    """A folder that exists or a Hub id, else an error naming the flag (not transformers' repo-id message)."""
    problem = None if value is None else source_problem(value, flag)
    if problem:
        raise FileNotFoundError(problem)
    return value


# Above this fraction of unknown tokens, a tokenizer is not the one the model was trained with.
MAX_UNKNOWN = 0.5


def check_tokenizer_encodes(tokenizer: Any, texts: list[str], source: str) -> None:
    """Refuse a tokenizer that turns most of the data into its unknown token: its answers would mean nothing."""
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return
    ids = [i for text in texts[:500] for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    share = sum(i == unknown for i in ids) / max(len(ids), 1)
    if share > MAX_UNKNOWN:
        raise ValueError(
            f"The tokenizer from {source} turns {share:.0%} of the --data tokens into its unknown token "
            f"{tokenizer.unk_token!r}: it is not the tokenizer this model was trained with. Pass --tokenizer "
            "(the base model's)."
        )


def _labelled_data(args: argparse.Namespace, model, max_rows: int | None = None):
    """The --data file's texts, their gold ids under the active mask's labels, those labels, and the tokenizer."""
    from transformers import AutoTokenizer

    from . import evaluation

    id2label = _id2label(model, model.active_mask)
    data = evaluation.read_labelled(args.data, args.task_name, args.label_column, args.text_columns)
    if max_rows:
        data = data.head(max_rows)
    gold = evaluation.gold_ids(data.labels, id2label, _label_map(args.label_map))
    source = _model_source(args.tokenizer, "--tokenizer") or args.base_model or model.get_base_model().name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise OSError(f"No tokenizer could be loaded from {source} ({err}); pass --tokenizer.") from None
    texts = list(data.first) + list(data.second or [])
    check_tokenizer_encodes(tokenizer, texts, source)
    return data, gold, id2label, tokenizer


def evaluate_command(args: argparse.Namespace) -> None:
    from . import evaluation

    model = _load_masked(args, args.repos[0])
    names = {"default": args.repos[0]}
    for i, repo in enumerate(args.repos[1:], start=1):
        model.load_mask(repo, f"mask{i}", args.revision, args.token)
        names[f"mask{i}"] = repo
    other = next((n for n in names if model.mask_labels(n) != model.mask_labels("default")), None)
    if other is not None:
        raise SystemExit(f"{names[other]} has other labels than {args.repos[0]}: evaluate masks of one label set.")
    data, gold, id2label, tokenizer = _labelled_data(args, model)
    logits = evaluation.mask_logits(model, list(names), data, tokenizer, args.batch_size, args.max_seq_length)
    ensembles = COMBINES if args.ensemble == "all" else ((args.ensemble,) if args.ensemble else ())
    if ensembles and len(names) < 2:
        print("(an ensemble of one mask is that mask)")
    results = evaluation.evaluate({names[n]: v for n, v in logits.items()}, gold, ensembles)
    baseline = results["majority_baseline"]
    majority = id2label[baseline["label_id"]]
    print(f"{args.data}: {results['rows']} rows; majority baseline ({majority}) {baseline['accuracy']:.4f}")
    print(f"\n{'':<50} {'accuracy':>9} {'over majority':>14}")
    rows = [(repo, r) for repo, r in results["masks"].items()]
    rows += [(f"ensemble of {len(names)} ({how})", r) for how, r in results["ensembles"].items()]
    for label, result in rows:
        print(f"{label:<50} {result['accuracy']:9.4f} {result['over_majority']:+14.4f}")
    _write_json(args.json, {"data": args.data, **results})


def interpolate_command(args: argparse.Namespace) -> None:
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    from . import evaluation

    masked = _load_masked(args, args.mask)
    merged = masked.merge().eval()  # gamma = 1: W0 ⊙ M, the masked model as a plain one
    finetuned = AutoModelForSequenceClassification.from_pretrained(_model_source(args.finetuned, "--finetuned")).eval()
    data, gold, _, tokenizer = _labelled_data(args, masked)
    gold = torch.from_numpy(gold)

    def accuracy(model) -> float:
        logits = evaluation.model_logits(model, data, tokenizer, args.batch_size, args.max_seq_length)
        return float((logits.argmax(-1) == gold).float().mean())

    gammas = [i / (args.points - 1) for i in range(args.points)]
    paths = [("finetuned -> masked", finetuned, merged)]
    if args.from_pretrained:
        # The pretrained weights (a mask never writes them), carrying the other end's head: only the backbone moves.
        pretrained = copy.deepcopy(merged)
        with torch.no_grad():
            for name, layer in masked.masked_modules().items():
                pretrained.get_submodule(name).weight.copy_(layer.weight)
        head = set(masked.head_tensor_names())
        with_finetuned_head = copy.deepcopy(pretrained)
        state = finetuned.state_dict()
        with torch.no_grad():
            for name, tensor in with_finetuned_head.state_dict().items():
                if name in head:
                    tensor.copy_(state[name])
        paths += [
            ("pretrained -> finetuned", with_finetuned_head, finetuned),
            ("pretrained -> masked", pretrained, merged),
        ]
    print(f"heads: interpolated with the backbones (both ends have {sorted(masked.head_tensor_names())})")
    if args.from_pretrained:
        print("the pretrained end of a line carries the other end's head, so only the backbone moves on it")
    results = []
    for label, start, end in paths:
        for gamma, metric in evaluation.interpolate(start, end, gammas, accuracy):
            results.append({"path": label, "gamma": gamma, "metric": metric})
            print(f"{label:<26} gamma {gamma:4.2f}  accuracy {metric:.4f}")
    _write_json(args.json, results)
    if args.plot:
        names = (os.path.basename(p.rstrip("/")) for p in (args.finetuned, args.mask))
        plot_interpolation(results, " / ".join(names), args.plot)


def plot_interpolation(results: list[dict[str, Any]], title: str, path: str) -> None:
    """Dev accuracy along each straight line between two models (paper Figure 6)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["path"] for r in results):
        points = [(r["gamma"], r["metric"]) for r in results if r["path"] == label]
        axes.plot(*zip(*points, strict=True), marker="o", label=label)
    axes.set_xlabel("gamma: W = W_start + gamma (W_end - W_start)")
    axes.set_ylabel("dev accuracy")
    axes.set_title(f"Mode connectivity: {title}", fontsize="medium")
    axes.legend(title="line (start -> end)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"wrote {path}")


def embed_command(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from . import evaluation

    masked = _load_masked(args, args.mask)
    data, gold, id2label, tokenizer = _labelled_data(args, masked, args.max_rows)

    def features(model) -> torch.Tensor:
        return evaluation.representations(model, data, tokenizer, args.batch_size, args.max_seq_length)

    with masked.disable_masks():
        found = {"pretrained": features(masked)}
    if args.finetuned:
        source = _model_source(args.finetuned, "--finetuned")
        found["finetuned"] = features(AutoModelForSequenceClassification.from_pretrained(source))
    found["masked"] = features(masked)
    results: dict[str, Any] = {"labels": [id2label[int(i)] for i in gold], "models": {}}
    print(f"{len(gold)} rows; linear-probe accuracy of the top block's [CLS] representation (5-fold):")
    for name, values in found.items():
        probe = evaluation.probe_accuracy(values.numpy(), gold)
        results["models"][name] = {"probe_accuracy": probe, "tsne": evaluation.tsne(values.numpy()).tolist()}
        print(f"  {name:<11} {probe:.4f}")
    _write_json(args.json, results)
    if args.plot:
        plot_embeddings(results, args.plot)


def plot_embeddings(results: dict[str, Any], path: str) -> None:
    """One t-SNE panel per model, points coloured by gold label (paper Figure 4)."""
    plt = _pyplot()
    models = results["models"]
    figure, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 4), squeeze=False)
    labels = results["labels"]
    for axis, (name, values) in zip(axes[0], models.items(), strict=True):
        for label in sorted(set(labels)):
            points = [p for p, y in zip(values["tsne"], labels, strict=True) if y == label]
            axis.scatter(*zip(*points, strict=True), s=6, label=label)
        axis.set_title(f"{name} (probe accuracy {values['probe_accuracy']:.2f})", fontsize="medium")
        axis.set_xlabel("t-SNE 1")
        axis.set_ylabel("t-SNE 2")
    axes[0][0].legend(title="gold label", fontsize="small")
    figure.suptitle("Top-block [CLS] representations, t-SNE")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"wrote {path}")


def _at_least(least: int):
    """An argparse type: an integer >= `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    return parse


FIGURE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def _figure_path(text: str) -> str:
    """An argparse type: a file to write a figure to, named with the format it is written in."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name such as {text.rstrip('/')}/plot.png")
    extension = text.rsplit(".", 1)[-1].lower() if "." in os.path.basename(text) else ""
    if extension not in FIGURE_FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: name the file with its format, one of .{', .'.join(FIGURE_FORMATS)}"
        )
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {parent} does not exist")
    return text


def _output_path(text: str) -> str:
    """An argparse type: a file to write (not a folder, in a folder that exists)."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name such as {text.rstrip('/')}/out.json")
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {parent} does not exist")
    return text


def _data_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--data", required=True, help="a labelled file: GLUE's own (with --task_name), csv, tsv, json(l)")
    sub.add_argument("--task_name", help="read --data as this GLUE task's file as distributed")
    sub.add_argument("--label_column", default="label")
    sub.add_argument("--text_columns", nargs="+", help="one or two text columns (default: the first two others)")
    sub.add_argument(
        "--label-map", "--label_map", dest="label_map", help="data_label=mask_label,... for another dataset's labels"
    )
    sub.add_argument("--base_model", help="the base (folder or id) instead of the one the masks record")
    sub.add_argument("--tokenizer", help="default: the base model's")
    sub.add_argument("--batch_size", type=_at_least(1), default=32)
    sub.add_argument("--max_seq_length", type=_at_least(2), default=128)
    sub.add_argument("--revision", help="a Hub revision of the mask repos")
    sub.add_argument("--token", help="a Hub token for private repos")
    sub.add_argument("--json", metavar="PATH", type=_output_path, help="write the results as JSON to PATH")


def _id2label(model, name: str) -> dict[int, str]:
    return dict(enumerate(model.mask_labels(name)))


def _label_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--label-map takes data_label=mask_label pairs separated by commas, not {text!r}.")
    return {a: b for a, b in pairs}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-masking", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser, plot_help: str) -> None:
        sub.add_argument("--revision", help="a Hub revision (branch, tag or commit) of the repo(s)")
        sub.add_argument("--token", help="a Hub token for private repos")
        sub.add_argument("--json", metavar="PATH", type=_output_path, help="write the results as JSON to PATH")
        sub.add_argument("--plot", metavar="PATH.png", type=_figure_path, help=plot_help)

    inspect = commands.add_parser(
        "inspect",
        help="what a mask repo is: base, head, size, sparsity per block and module",
        description="What a mask repo is: its base model and revision, head, codec, bytes on disk against the "
        "full model, and the sparsity of each block and masked module (no base model is loaded).",
    )
    inspect.add_argument("repo", help="a mask repo: a folder or a Hub id")
    common(inspect, "per-block sparsity bars, one bar per module type")
    inspect.set_defaults(run=inspect_command)

    compare = commands.add_parser(
        "compare",
        help="how different two masks are (paper §6.2), per module",
        description="The dissimilarity s = |M_A - M_B|_1 / (|M_A - M_A,init|_1 + |M_B - M_B,init|_1) of two masks "
        "of one base, per masked module; the initial masks are regenerated from each repo's config and seed.",
    )
    compare.add_argument("repo_a")
    compare.add_argument("repo_b")
    common(compare, "a blocks x module-type heatmap of s (paper Figure 5)")
    compare.set_defaults(run=compare_command)

    evaluate = commands.add_parser(
        "evaluate",
        help="masks alone and as ensembles on labelled data (paper Tables 2 and 3)",
        description="Accuracy of each mask alone and, with --ensemble, of their ensembles, against the majority "
        "baseline of the evaluated file. --label-map applies a mask to another dataset of its task type (paper "
        "Table 3's transfer): the improvement over that dataset's majority baseline is printed.",
    )
    evaluate.add_argument("repos", nargs="+", metavar="REPO", help="mask repos of one base and one label set")
    evaluate.add_argument("--ensemble", choices=[*COMBINES, "all"], help="also evaluate the ensemble(s)")
    _data_arguments(evaluate)
    evaluate.set_defaults(run=evaluate_command)

    interpolate = commands.add_parser(
        "interpolate",
        help="mode connectivity between a finetuned and a masked model (paper §6.3)",
        description="The dev accuracy of W(gamma) = W0 + gamma (W1 - W0) on a grid of gamma between a finetuned "
        "model (gamma=0) and a masked model merged (gamma=1); with --from-pretrained also the lines from the "
        "pretrained model to each (paper Figure 6).",
    )
    interpolate.add_argument("--finetuned", required=True, help="a finetuned model folder (or Hub id)")
    interpolate.add_argument("--mask", required=True, help="a mask repo of the same base and task")
    interpolate.add_argument(
        "--points", type=_at_least(2), default=11, help="gamma values from 0 to 1, both included (default 11)"
    )
    interpolate.add_argument("--from-pretrained", "--from_pretrained", dest="from_pretrained", action="store_true")
    interpolate.add_argument(
        "--plot", metavar="PATH.png", type=_figure_path, help="accuracy along each line (paper Figure 6)"
    )
    _data_arguments(interpolate)
    interpolate.set_defaults(run=interpolate_command)

    embed = commands.add_parser(
        "embed",
        help="t-SNE and a linear probe of pretrained, finetuned and masked representations (paper §6.1)",
        description="The top block's [CLS] representation of each row under the pretrained model, a finetuned "
        "model (--finetuned) and the masked model: a t-SNE map coloured by gold label (paper Figure 4) and a "
        "linear probe's cross-validated accuracy on each, so the picture comes with a number.",
    )
    embed.add_argument("--mask", required=True, help="a mask repo (its base is the pretrained model)")
    embed.add_argument("--finetuned", help="a finetuned model folder (or Hub id) of the same base")
    embed.add_argument("--max_rows", type=_at_least(2), default=1000, help="use the first N rows (t-SNE is quadratic)")
    embed.add_argument(
        "--plot", metavar="PATH.png", type=_figure_path, help="one t-SNE panel per model (paper Figure 4)"
    )
    _data_arguments(embed)
    embed.set_defaults(run=embed_command)

    from .serve.settings import add_arguments as serve_arguments

    serve = commands.add_parser(
        "serve",
        help="serve many tasks from one resident base over HTTP (pip install 'hf-masking[serve]')",
        description="One base model, one mask per task, requests for many tasks batched into mixed-mask forwards. "
        "POST /predict, POST /generate, GET /tasks, /health, /ready, /metrics; PUT/DELETE /tasks/{name} with an "
        "admin token. Every limit below has a safe default. --ray runs Ray Serve replicas instead of one process.",
    )
    serve_arguments(serve)
    serve.set_defaults(run=serve_command)
    return parser


def serve_command(args: argparse.Namespace) -> None:
    try:
        from .serve.server import run
    except ImportError as err:
        raise SystemExit(f"hf-masking serve needs its extra: pip install 'hf-masking[serve]' ({err}).") from None
    run(args)


def main(argv: Sequence[str] | None = None) -> None:
    from .errors import BaseModelMismatchError, MaskRepoError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (MaskRepoError, BaseModelMismatchError, OSError, ValueError) as err:
        print(f"hf-masking {args.command}: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    except SystemExit as stop:  # a command's own refusal: a usage error like the others, exit status 2
        if isinstance(stop.code, str):
            print(f"hf-masking {args.command}: {stop.code}", file=sys.stderr)
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    main()
