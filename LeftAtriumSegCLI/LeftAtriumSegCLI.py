#!/usr/bin/env python-real
"""The Slicer module's background worker: segment one volume with LeftAtriumSegLib.

A scripted CLI module (``LeftAtriumSegCLI.xml`` describes its parameters). Slicer runs it with
its own Python, ``python-real``: it writes the input volume to a temporary file, passes the file
names as ``--inputVolume`` and ``--outputLabel``, shows the progress printed as
``<filter-progress>`` lines, reads the label map back into a node when the process exits with
status 0, reads the return parameters (model, qc, qcReasons) from ``--returnparameterfile``, and
ends the process when the user cancels (docs/slicer-api.md has the source lines). It runs the
same segmentation of one image as ``leftatriumseg segment`` runs for each case.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _put_library_on_path() -> None:
    """Make LeftAtriumSegLib importable. Installed (and in an extension's build tree) this script
    is in ``lib/Slicer-X.Y/cli-modules/`` and the library in ``lib/Slicer-X.Y/qt-scripted-modules/``,
    which the extension's launcher settings also put on PYTHONPATH; in the source tree it is in
    ``LeftAtriumSeg/`` beside this script's folder."""
    here = Path(__file__).resolve().parent
    for folder in (here.parent / "qt-scripted-modules", here.parent / "LeftAtriumSeg"):
        if (folder / "LeftAtriumSegLib").is_dir():
            sys.path.insert(0, str(folder))
            return


def _progress(fraction: float) -> None:
    print(f"<filter-progress>{fraction:.3f}</filter-progress>", flush=True)


def _write_return_parameters(path: str, values: dict[str, str]) -> None:
    """``name = value`` lines, as Slicer's ModuleDescription::ReadParameterFile reads them (one per
    line: no line breaks in values)."""
    try:
        with open(path, "w", encoding="utf-8") as handle:
            for name, value in values.items():
                handle.write(f"{name} = {' '.join(str(value).split())}\n")
    except OSError as error:
        raise OSError(f"{path}: the return parameters cannot be written ({error.strerror or error})") from None


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line starting "error: ", which the module shows (LeftAtriumSeg.py _workerError), not the usage.
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _options_as_one_value(argv: list[str]) -> list[str]:
    """``--cleanupOptions VALUE`` as ``--cleanupOptions=VALUE``: a value of one option's word
    (``--no-fill-holes``) would otherwise be taken for an option of this script."""
    joined, index = [], 0
    while index < len(argv):
        if argv[index] == "--cleanupOptions" and index + 1 < len(argv):
            joined.append(f"--cleanupOptions={argv[index + 1]}")
            index += 2
        else:
            joined.append(argv[index])
            index += 1
    return joined


def main(argv: list[str] | None = None) -> int:
    _put_library_on_path()
    from LeftAtriumSegLib.errors import LeftAtriumSegError  # noqa: PLC0415 - needs the path above
    from LeftAtriumSegLib.io import read_image, write_label_map  # noqa: PLC0415
    from LeftAtriumSegLib.pipeline import Segmenter, capped_threads  # noqa: PLC0415
    from LeftAtriumSegLib.postprocessing import CleanupSettings  # noqa: PLC0415

    parser = _ArgumentParser(prog="LeftAtriumSegCLI", description=__doc__.splitlines()[0])
    parser.add_argument("--inputVolume", required=True)
    parser.add_argument("--outputLabel", required=True)
    parser.add_argument("--modelPath", default="")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cleanupOptions", default="")
    parser.add_argument("--returnparameterfile")
    args = parser.parse_args(_options_as_one_value(sys.argv[1:] if argv is None else argv))
    if args.threads < 0:
        parser.error(f"argument --threads: a count >= 0 (0: ONNX Runtime's default), not {args.threads}")

    try:
        _progress(0.0)
        output = Path(args.outputLabel)
        if not output.parent.is_dir():  # fails before the work, not after it
            raise LeftAtriumSegError(f"{output.parent}: not a folder; the label map cannot be written there")
        image = read_image(args.inputVolume)
        segmenter = Segmenter.load(args.modelPath or None, args.device,
                                   CleanupSettings.from_options(args.cleanupOptions), capped_threads(args.threads))
        result = segmenter.segment(image, lambda fraction: _progress(0.05 + 0.9 * fraction))
        write_label_map(result.mask, image, output, overwrite=True)
        if args.returnparameterfile:
            _write_return_parameters(args.returnparameterfile, {
                "model": segmenter.config.label, "qc": result.quality.flag, "qcReasons": result.quality.reasons_text})
        _progress(1.0)
    except (LeftAtriumSegError, ValueError, RuntimeError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Slicer shows what the worker writes as text it decodes as UTF-8: paths with accents must
    # arrive so on every platform (Windows writes the ANSI code page otherwise).
    sys.stdout.reconfigure(encoding="utf-8", errors="replace")
    sys.stderr.reconfigure(encoding="utf-8", errors="replace")
    sys.exit(main())
