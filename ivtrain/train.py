"""`python -m ivtrain.train RECIPE [--set key=value ...]`: the entry point launchers run.

Works under plain python (one process), torchrun and the deepspeed launcher.
"""
from __future__ import annotations

import argparse
import os
import sys

from ivtrain.config import ConfigError, load_recipe


def run_recipe(recipe) -> int:
    """Train `recipe` in this process; 0, or 2 with one line on stderr when it cannot start (bad data, missing models,
    a spec the shards cannot satisfy) or its out_dir's checkpoint cannot be resumed exactly."""
    from ivtrain.engine import ResumeError, SetupError, train

    try:
        train(recipe)
    except (ResumeError, SetupError) as e:
        if os.environ.get("RANK", "0") == "0":  # every rank stops for the same reason; one says it
            what = "resume error" if isinstance(e, ResumeError) else "cannot start"
            print(f"{what}: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ivtrain.train", description=__doc__)
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. optim.lr=1e-3 (repeatable)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.set)
    except ConfigError as e:
        print(f"recipe error: {e}", file=sys.stderr)
        return 2
    return run_recipe(recipe)


if __name__ == "__main__":
    sys.exit(main())
