"""The model on Task02_Heart images whose header is corrected to show their anatomy, as a scan
straight from a scanner (correct DICOM geometry) would.

    .venv/bin/python bench/task02_anatomy.py ../shared/data/msd_heart [--model PATH | --run RUN_DIR] [--cases la_003 ...]

Task02_Heart's headers mislabel the axes: read in LPS as the header has it, the images run
posterior along x, inferior along y and to the patient's right along z (the header's "axial"
slices are anatomically sagittal; seen on the images: aortic arch at the top of those slices,
spine behind the heart, descending aorta to the left of the spine once corrected). The
networks learned bSSFP anatomy in that mislabelled frame. This benchmark gives each case the
direction its anatomy really has (``datasets.task02_header_corrected``: voxels unchanged, so the reference
mask applies as it is), runs the whole ``segment`` pipeline both ways and prints Dice, HD95 and
the volume error per case. With the bundled model every case is a training case, so the figures
as given are optimistic; the difference between the two columns is the point. With ``--run`` (a
``train --folds K`` run) each case that run held out is scored by its own fold's model: the
cross-validated figures of both presentations.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import SimpleITK as sitk
from LeftAtriumSegLib.datasets import read_decathlon_cases, task02_header_corrected
from presentations import add_model_arguments, score_presentations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="Task02_Heart in the Decathlon layout")
    add_model_arguments(parser)
    parser.add_argument("--cases", nargs="+", help="case IDs (default: all)")
    args = parser.parse_args()
    cases = [case for case in read_decathlon_cases(args.data_dir) if not args.cases or case.case_id in args.cases]
    score_presentations(cases, args, {"as given": lambda image: sitk.DICOMOrient(image, "LPS"),
                                      "anatomical header": task02_header_corrected})


if __name__ == "__main__":
    main()
