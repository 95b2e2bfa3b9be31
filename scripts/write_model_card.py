r"""(Re)write the model card (README.md) of an existing cohort folder from its files.

    python scripts/write_model_card.py runs/cohort-sst2
    python scripts/write_model_card.py runs/screen/diverse-s0 --name mpnet-sst2-2x2 \
        --kernels docs/results/kernels-mpnet/kernels.json \
        --out docs/examples/model_card_mpnet_sst2.md

`shoal distill` writes the card itself; this gives one to cohorts distilled before it did, and
rewrites it once `shoal bench kernels --cohort DIR --out DIR` has left `kernels.json` there. It
reads config.json, shoal_meta.json and distill_config.json (where present) and changes nothing
else in the folder; with --out the card goes there and the folder is only read.
"""

from __future__ import annotations

import argparse
import sys

from shoal.distill.model_card import write_model_card
from shoal.errors import ShoalError


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cohort", help="A cohort folder (config.json and shoal_meta.json).")
    p.add_argument("--out", help="Where the card goes (default: COHORT/README.md).")
    p.add_argument(
        "--kernels",
        help="`shoal bench kernels` JSON measured on a cohort of this shape "
        "(default: COHORT/kernels.json where present).",
    )
    p.add_argument("--name", help="The card's title and model-index name (default: the folder's).")
    args = p.parse_args()
    try:
        path = write_model_card(args.cohort, out=args.out, kernels=args.kernels, name=args.name)
    except ShoalError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
