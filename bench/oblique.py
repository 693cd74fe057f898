"""Held-out cases presented as oblique acquisitions: the anatomy fixed in space, the scan's grid
tilted about two axes by each angle, the direction cosines saying so (as a scanner writes an oblique
acquisition), the same size and spacing. Scores ``segment``'s whole pipeline on each against the
reference mask presented alike (linear interpolation cut at 0.5); 0 degrees is the scan as given.

    .venv/bin/python bench/oblique.py DATA --run RUN [--angles 0 15 30] [--cases la_003 ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from LeftAtriumSegLib.datasets import acquired_obliquely, read_decathlon_cases
from presentations import add_model_arguments, score_presentations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a Decathlon folder (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--angles", type=float, nargs="+", default=[0.0, 15.0, 30.0])
    parser.add_argument("--cases", nargs="+", help="only these cases")
    add_model_arguments(parser)
    args = parser.parse_args()
    cases = [case for case in read_decathlon_cases(args.data) if not args.cases or case.case_id in args.cases]
    presentations = {f"{angle:g} degrees": (lambda image, angle=angle: acquired_obliquely(image, angle) if angle else image)
                     for angle in args.angles}
    score_presentations(cases, args, presentations)


if __name__ == "__main__":
    main()
