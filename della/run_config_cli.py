"""`python -m della run-config`: the run config of one (dataset, model, seed), by hand.

The workflow's `run_config` rule writes the same file: the workflow config is validated against
workflow/schemas/config.schema.yaml (which fills in the schema's defaults, as the Snakefile does
with `snakemake.utils.validate`), then `della.config.resolve_run_config` builds the run config.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from della.config import ConfigError, RunConfig, experiment_name, read_yaml_mapping, resolve_run_config
from della.io import atomic_write_text

log = logging.getLogger(__name__)

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def load_workflow_config(path: str | Path) -> dict[str, Any]:
    """A workflow config (e.g. config/config.yaml), validated and completed with the schema's defaults."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    path = Path(path)
    config = read_yaml_mapping(path, "workflow config")
    if not SCHEMA.is_file():
        raise FileNotFoundError(f"{SCHEMA}: the workflow schema is missing (run from a clone of the repository)")
    try:
        validate(config, schema=str(SCHEMA))
    except WorkflowError as err:
        raise ConfigError(f"{path}: {err}") from None
    return config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "write the run config of one (dataset, model, seed) of a workflow config"
    p.add_argument("--config", default="config/config.yaml", help="workflow config (default: %(default)s)")
    p.add_argument("--dataset", help="a key of the config's `datasets`")
    p.add_argument("--model", help="a key of the config's `models`")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--resolved", metavar="JSON",
                   help="an already resolved run config (the workflow's run_config rule passes it, --config "
                        "overrides included); checked and written instead of resolving --config")
    p.add_argument("--out", required=True, help="e.g. results/<experiment>/runs/<dataset>/<model>/seed<seed>/config.yaml")


def run(args: argparse.Namespace) -> None:
    if args.resolved:
        run_config = json.loads(args.resolved)
        RunConfig.from_dict(run_config, where="--resolved")
    elif args.dataset and args.model:
        config = load_workflow_config(args.config)
        results = f"results/{experiment_name(config, args.config)}"  # as the workflow lays it out
        run_config = resolve_run_config(config, args.dataset, args.model, args.seed, results)
    else:
        raise ConfigError("run-config needs --dataset and --model (or --resolved)")
    atomic_write_text(args.out, yaml.safe_dump(run_config, sort_keys=False))
    log.info("wrote %s", args.out)
