"""`python -m metrics compute|list`: compute generation metrics into a metrics JSON.

Every MetricOptions field is a flag (`bleu_order` -> `--bleu-order`; booleans also take
`--no-...`; orders as `1,2,3,4`). Exit status 2 on bad input (the message names file and line),
1 when a metric cannot be computed (e.g. its encoder is missing) unless it is listed in
`--optional`, which records it with value null and its error. A human reference row: the
validation split as samples, `--max-samples` as many as a run generates, against the test split:

    python -m metrics compute --samples valid.txt --references test.txt --max-samples 200 \
        --metrics bleu,self_bleu,dist,js,cnd,mauve --out human.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from pathlib import Path

from metrics import registry
from metrics.compute import MetricFailed, compute, write_json
from metrics.options import MetricOptions


def _orders(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated orders like 1,2,3,4, got {text!r}")


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metric options (defaults in brackets)")
    for field in dataclasses.fields(MetricOptions):
        flag = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata['help']} [{field.default!r}]".replace("%", "%%")
        if isinstance(field.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                               help=help_text)
        else:
            kind = _orders if isinstance(field.default, tuple) else type(field.default)
            group.add_argument(flag, type=kind, default=field.default, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m metrics", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("compute", help="compute metrics and write the metrics JSON")
    run.add_argument("--samples", required=True, help="generated texts, one per line (or .jsonl)")
    run.add_argument("--references", help="reference (test) texts or targets, one per line or .jsonl")
    run.add_argument("--sources", help="conditional inputs aligned with the samples (or .jsonl)")
    run.add_argument("--metrics", required=True,
                     help=f"comma-separated registry names: {','.join(registry.names())}")
    run.add_argument("--optional", default="",
                     help="comma-separated metrics recorded as null + error when they cannot be "
                          "computed (the others make the command fail)")
    run.add_argument("--max-samples", type=int, default=0,
                     help="score a seeded random subset of this many samples (0: all); sizes a "
                          "human reference row like a generation run")
    run.add_argument("--sample-seed", type=int, default=0, help="seed of --max-samples")
    run.add_argument("--out", required=True, help="metrics JSON to write (atomically)")
    run.add_argument("--threads", type=int, default=0,
                     help="torch threads of the encoders (0: torch's default); fixing it makes MAUVE "
                          "and BERTScore reproduce bit for bit across executors")
    _add_option_flags(run)
    sub.add_parser("list", help="list the registered metrics")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing notes
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for name in registry.names():
            spec = registry.get(name)
            arrow = "higher" if spec.higher_is_better else "lower"
            print(f"{name:10s} {arrow} is better  x{spec.display_scale:g}  needs {spec.needs:10s} "
                  f"keys: {','.join(spec.result_keys)}")
        return 0
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(MetricOptions)}
    names = [n.strip() for n in args.metrics.split(",") if n.strip()]
    optional = [n.strip() for n in args.optional.split(",") if n.strip()]
    if Path(args.out).is_dir():
        logging.getLogger("metrics").error("--out %s is a directory; give the JSON file to write",
                                           args.out)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        document = compute(names, args.samples, args.references, args.sources, optional,
                           args.max_samples, args.sample_seed, **options)
        document["inputs"]["threads"] = args.threads
    except MetricFailed as err:
        logging.getLogger("metrics").error("%s", err)
        return 1
    except (ValueError, FileNotFoundError, KeyError) as err:
        logging.getLogger("metrics").error("%s", err.args[0] if isinstance(err, KeyError) else err)
        return 2
    write_json(document, args.out)
    for entry in document["metrics"].values():
        value = entry["value"]
        shown = "null" if value is None else f"{value * entry['display_scale']:.{entry['decimals']}f}"
        print(f"{entry['label']:10s} {shown:>8s}  {entry['signature']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
