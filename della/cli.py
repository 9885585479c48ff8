"""`python -m della <command>`: one subcommand per workflow step, each runnable by hand.

Each command lives in its own module, which exposes `add_arguments(parser)` and `run(args)`;
modules are imported lazily so `--help` stays fast and torch loads only when needed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "prepare-data": ("della.data.prepare", "validate a corpus and write results/<experiment>/data/<dataset>"),
    "tokenizer": ("della.data.tokenizer", "train or copy the tokenizer of a dataset"),
    "data-stats": ("della.data.stats", "sentences per split and average length of datasets (Table 7)"),
    "run-config": ("della.run_config_cli", "the run config of one (dataset, model, seed) of a workflow config"),
    "models": ("della.models_cli", "list the registered models and their model_args defaults"),
    "import-checkpoint": ("della.checkpoints", "a run dir from an HF GPT-2 directory or an official DELLA state_dict"),
    "export-lm": ("della.export_lm", "a trained plain GPT-2 LM as a Hugging Face directory (MAUVE's feature encoder)"),
    "train": ("della.train", "train one model (resumes from its last checkpoint)"),
    "evaluate": ("della.evaluate", "IW-PPL, ELBO, KL, MI, AU (+ attribute probe) -> eval.json"),
    "generate": ("della.generate", "sample text from a trained model -> samples.txt"),
    "interpolate": ("della.interpolate", "greedy text along the path between two sentences' posteriors (Fig 3)"),
    "layer-sweep": ("della.layer_sweep", "Fig. 2: PPL, -ELBO and KL against the number of DELLA latent layers -> SVG"),
    "aggregate": ("della.tables", "collect eval/metrics JSON (or run.json + benchmarks) into a long CSV"),
    "table": ("della.tables", "render a paper table as LaTeX, CSV, Markdown and HTML"),
    "curves": ("della.report", "learning curves of a run (CE, KL per latent group, beta) -> SVG/PNG"),
    "samples-page": ("della.report", "the first generated samples of a run and their settings -> HTML"),
    "provenance": ("della.report", "config, seed, versions, git commit and device of every run -> HTML"),
    "human-eval": ("della.human_eval", "blind rating sheets (make) and their scores as Table 3 (score)"),
}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m della", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:  # import only the module that will run
            mod = importlib.import_module(module)
            (getattr(mod, f"add_{name.replace('-', '_')}_arguments", None) or mod.add_arguments)(p)
            p.set_defaults(_run=getattr(mod, f"run_{name.replace('-', '_')}", None) or mod.run)
    args = parser.parse_args(argv)
    try:
        args._run(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        logging.getLogger("della").error("%s", err)
        sys.exit(2)
