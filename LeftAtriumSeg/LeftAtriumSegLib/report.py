"""Pictures and a report of segmentations, for batch work and for sharing outside Slicer.

Per case: a montage of axial slices through the atrium with contours, an animated GIF
scrolling through the slices around it, a surface mesh (STL, physical LPS coordinates in mm) and a
rendering of it, and a page that shows them with a rotatable 3D view. Per batch: ``report.html``,
a summary that opens at once for thousands of cases: the table with the quality flag (failed
cases first, then flagged ones, with their reasons), the volume plots and the agreement with
reference volumes; it links to the case pages and embeds no picture. plotly.js is written once beside the pages.
Contours and meshes use colours that colour-blind readers tell apart (Okabe and Ito's orange and
blue). Images are shown in LPS order: patient's left on the viewer's right, anterior at the top.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import sys
import urllib.parse
import warnings
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted
# A case name in a script the font lacks (李) is drawn with boxes; matplotlib's warning would print
# its own source lines for every picture, even under --quiet.
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import plotly.offline  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import trimesh  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage import measure  # noqa: E402
from tqdm import tqdm  # noqa: E402

from . import __version__  # noqa: E402
from .batch import (  # noqa: E402
    clinical_match_warnings,
    deferred_signals,
    mask_in_place,
    mask_maker,
    read_results,
    refuse_shared_names,
)
from .errors import LeftAtriumSegError, error_line, some_names  # noqa: E402
from .evaluation import matched_cases  # noqa: E402
from .io import (  # noqa: E402
    CaseInput,
    atomic_output,
    case_sha256,
    create_output_folder,
    file_sha256,
    files_by_case,
    find_cases,
    on_grid_of,
    read_case,
    read_mask,
    refuse_existing_output,
    remove_stale_partials,
)
from .measurements import LAVI_DECIMALS, VolumeIndex, index_volume, measure_volume  # noqa: E402
from .metrics import bland_altman, dice  # noqa: E402
from .quality import reason_counts  # noqa: E402

# Okabe and Ito's palette ("Color universal design", 2008): orange and blue stay apart for every
# kind of colour blindness, where red and green do not.
PREDICTION_RGB = (230, 159, 0)
REFERENCE_RGB = (0, 114, 178)
# Slice pictures are indices into one palette: 254 greys, then the two contours' colours. A GIF
# written in it needs no colour quantization, the slow half of writing one.
GREYS = 254
PALETTE = np.array([(round(g * 255 / (GREYS - 1)),) * 3 for g in range(GREYS)] + [PREDICTION_RGB, REFERENCE_RGB],
                   dtype=np.uint8)
# Around the atrium, the montage and the slice animation show this much of the scan: enough to
# see where the mask stops and whether atrium goes on beyond it.
CONTEXT_MM = 25.0


@dataclass(frozen=True)
class CaseReport:
    """Pictures and measurements of one case, as ``report_case`` makes them.

    Attributes
    ----------
    case : str
    volume_ml : float
        Volume of the mask in mL (voxel count times voxel volume).
    montage_png, slices_gif : Path
        The case's montage and slice animation.
    surface_stl, surface_png : Path or None
        The mask's surface mesh and its rendering; None for an empty mask, which has no surface.
    mesh_volume_ml : float
        Volume enclosed by the surface mesh in mL (0 for an empty mask).
    reference_ml, dice : float or None
        Volume of the reference mask in mL and the mask's Dice against it; None without one.
    height_cm, weight_kg : float or None
        Height in cm and weight in kg, for the volume index; None where not known.
    qc, qc_reasons : str
        The quality flag ``segment`` gave the mask and its reasons; "" where no table records it.
    """

    case: str
    volume_ml: float
    montage_png: Path
    slices_gif: Path
    surface_stl: Path | None
    surface_png: Path | None
    mesh_volume_ml: float
    reference_ml: float | None = None
    dice: float | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    qc: str = ""  # the quality flag segment gave the mask (ok, review), "" where no table records it
    qc_reasons: str = ""

    @property
    def volume_index(self) -> VolumeIndex | None:
        """The LA volume index (``measurements.index_volume``); None where height or weight is not known."""
        if self.height_cm and self.weight_kg:
            return index_volume(self.volume_ml, self.height_cm, self.weight_kg)
        return None


def to_display(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``(Z, Y, X)`` array of ``image`` reoriented to LPS, and its (Z, Y, X) spacing in mm."""
    oriented = sitk.DICOMOrient(image, "LPS")
    return sitk.GetArrayFromImage(oriented), oriented.GetSpacing()[::-1]


def _window(slices: np.ndarray) -> np.ndarray:
    low, high = np.percentile(slices, [1, 99.5])
    return np.clip((slices - low) / max(high - low, 1e-6), 0, 1)


def atrium_slices(mask: np.ndarray, reference: np.ndarray | None, count: int = 12) -> list[int]:
    """Up to ``count`` evenly spaced axial slice indices that hold prediction or reference; where
    neither holds any voxel, of the whole scan, which shows where the atrium was missed.

    ``mask`` and ``reference`` (or None) are boolean ``(Z, Y, X)`` arrays.
    """
    present = mask.any(axis=(1, 2)) if reference is None else (mask | reference).any(axis=(1, 2))
    holding = np.flatnonzero(present) if present.any() else np.arange(len(present))
    if len(holding) <= count:
        return holding.tolist()
    return holding[np.round(np.linspace(0, len(holding) - 1, count)).astype(int)].tolist()


def atrium_box(present: np.ndarray, spacing_mm: Sequence[float], context_mm: float = CONTEXT_MM) -> tuple[slice, ...]:
    """The ``(Z, Y, X)`` box around the voxels of ``present`` with ``context_mm`` on every side,
    within the array; the whole array where ``present`` is empty.

    ``spacing_mm`` is the voxel spacing in the same (Z, Y, X) order, in mm.
    """
    if not present.any():
        return tuple(slice(0, n) for n in present.shape)
    box = []
    for axis, spacing in enumerate(spacing_mm):
        holding = np.flatnonzero(present.any(axis=tuple(a for a in range(3) if a != axis)))
        margin = math.ceil(context_mm / spacing)
        box.append(slice(max(int(holding[0]) - margin, 0), min(int(holding[-1]) + margin + 1, present.shape[axis])))
    return tuple(box)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """In-plane boundary pixels of a ``(..., Y, X)`` mask."""
    structure = np.zeros((3,) * mask.ndim, bool)
    centre = (1,) * (mask.ndim - 2)
    structure[centre] = ndimage.generate_binary_structure(2, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure)


def overlay_frames(image: np.ndarray, mask: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Grey slices with prediction (orange) and reference (blue) contours, as indices into ``PALETTE``.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Intensities, windowed to their 1st-99.5th percentiles.
    mask : ndarray of bool, shape (Z, Y, X)
    reference : ndarray of bool, shape (Z, Y, X), optional

    Returns
    -------
    ndarray of uint8, shape (Z, Y, X)
        ``PALETTE[frames]`` are the RGB frames; contours are the masks' in-plane boundaries.
    """
    frames = np.round(_window(image.astype(np.float32)) * (GREYS - 1)).astype(np.uint8)
    if reference is not None:
        frames[_boundary(reference)] = GREYS + 1
    frames[_boundary(mask)] = GREYS
    return frames


def write_montage(path: Path, image: np.ndarray, mask: np.ndarray, reference: np.ndarray | None,
                  spacing_mm: Sequence[float], title: str) -> list[int]:
    """PNG montage of the slices through the atrium, with contours.

    Up to 12 slices (``atrium_slices``), zoomed on the atrium's in-plane box (``atrium_box``).

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Intensities in display orientation (``to_display``).
    mask, reference : ndarray of bool, shape (Z, Y, X)
        Prediction and reference on ``image``'s grid; ``reference`` may be None.
    spacing_mm : sequence of 3 float
        ``image``'s (Z, Y, X) voxel spacing in mm.

    Returns
    -------
    list of int
        The slice indices shown.
    """
    indices = atrium_slices(mask, reference)
    _, rows, columns = atrium_box(mask if reference is None else mask | reference, spacing_mm)
    image, mask = image[:, rows, columns], mask[:, rows, columns]
    reference = None if reference is None else reference[:, rows, columns]
    columns = 4
    rows = max(1, math.ceil(len(indices) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows + 0.6), squeeze=False)
    frames = PALETTE[overlay_frames(image[indices], mask[indices], None if reference is None else reference[indices])]
    for axis in axes.ravel():
        axis.axis("off")
    for axis, index, frame in zip(axes.ravel(), indices, frames):
        axis.imshow(frame, aspect=spacing_mm[1] / spacing_mm[2])  # a pixel as tall and wide as its voxel
        axis.set_title(f"slice {index}", fontsize=10)
    legend = "orange: prediction" + ("   blue: reference" if reference is not None else "")
    figure.suptitle(f"{title}\n{legend}", fontsize=11, parse_math=False)  # a case's name is not TeX: $x$
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=80)
    plt.close(figure)
    return indices


def write_slice_gif(path: Path, image: np.ndarray, mask: np.ndarray, reference: np.ndarray | None,
                    spacing_mm: Sequence[float], frame_ms: int = 80) -> tuple[slice, ...]:
    """Animated GIF of the axial slices through the atrium's box (``atrium_box``), with contours,
    one pixel a voxel where the slices' voxels are square (the case page enlarges it); returns the
    box shown.

    ``image``, ``mask``, ``reference`` and ``spacing_mm`` as in ``write_montage``; ``frame_ms`` is
    each frame's duration in ms.
    """
    box = atrium_box(mask if reference is None else mask | reference, spacing_mm)
    frames = overlay_frames(image[box], mask[box], None if reference is None else reference[box])
    # Square pixels of the finer in-plane spacing, each taking its voxel's index: a scan acquired
    # in another plane has oblong voxels in the axial plane.
    finest = min(spacing_mm[1:])
    for axis, spacing in ((1, spacing_mm[1]), (2, spacing_mm[2])):
        size = round(frames.shape[axis] * spacing / finest)
        frames = np.take(frames, np.minimum(((np.arange(size) + 0.5) * finest / spacing).astype(int),
                                            frames.shape[axis] - 1), axis=axis)
    pictures = [Image.fromarray(frame) for frame in frames]
    for picture in pictures:
        picture.putpalette(PALETTE.tobytes())
    pictures[0].save(path, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
    return box


def surface_mesh(mask: np.ndarray, image: sitk.Image) -> trimesh.Trimesh:
    """Closed surface of a ``(Z, Y, X)`` mask on ``image``'s grid, vertices in LPS mm.

    Made by marching cubes; its faces face outwards, so that its volume is positive.
    """
    padded = np.pad(mask.astype(np.float32), 1)
    vertices_zyx, faces, _, _ = measure.marching_cubes(padded, level=0.5)
    ijk = vertices_zyx[:, ::-1] - 1.0
    to_physical = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    vertices = ijk @ to_physical.T + np.array(image.GetOrigin())
    if np.linalg.det(to_physical) < 0:  # a mirroring grid turns the faces inside out
        faces = faces[:, ::-1]
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if mesh.volume < 0:  # marching cubes' winding depends on the axis order: face outwards
        mesh.invert()
    return mesh


def write_surface(stl_path: Path, png_path: Path, mesh: trimesh.Trimesh, title: str) -> None:
    """STL of the mesh and a shaded rendering of it."""
    mesh.export(stl_path, file_type="stl")
    figure = plt.figure(figsize=(5, 5))
    axis = figure.add_subplot(projection="3d")
    normals = mesh.face_normals
    shade = 0.35 + 0.65 * np.clip(normals @ np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8]), 0, 1)
    colours = np.outer(shade, np.array(PREDICTION_RGB) / 255)
    axis.add_collection3d(Poly3DCollection(mesh.vertices[mesh.faces], facecolors=colours, linewidths=0))
    low, high = mesh.bounds
    centre, half = (low + high) / 2, (high - low).max() / 2
    for setter, c in zip((axis.set_xlim, axis.set_ylim, axis.set_zlim), centre):
        setter(c - half, c + half)
    axis.set_xlabel("L (mm)")
    axis.set_ylabel("P (mm)")
    axis.set_zlabel("S (mm)")
    axis.set_title(title, parse_math=False)
    figure.savefig(png_path, format="png", dpi=80)
    plt.close(figure)


def report_case(case: str, image: sitk.Image, mask: np.ndarray, reference: np.ndarray | None, output_dir: Path,
                overwrite: bool = False, height_cm: float | None = None, weight_kg: float | None = None,
                qc: str = "", qc_reasons: str = "", made_from: dict | None = None) -> CaseReport:
    """Every picture of one case (montage, slice animation, surface mesh and its rendering) and its
    page (``case_page``). The files take their names together, the page last, with SIGINT and
    SIGTERM held meanwhile: a case's files are there whole or not at all.

    Parameters
    ----------
    case : str
        Names the files, ``CASE_montage.png`` and so on, in ``output_dir``.
    image : SimpleITK.Image
    mask, reference : ndarray of bool, shape (Z, Y, X)
        Prediction and reference on ``image``'s grid; ``reference`` may be None.
    output_dir : Path
    overwrite : bool, optional
        Replace existing files.
    height_cm, weight_kg : float, optional
        Height in cm and weight in kg, for the volume index.
    qc, qc_reasons : str, optional
        The quality flag ``segment`` gave the mask, and its reasons.
    made_from : dict, optional
        What the files are made from (``case_inputs``), kept in the page for ``kept_case``.
    """
    volume_ml = measure_volume(mask, image.GetSpacing()).volume_ml
    reference_ml = None if reference is None else measure_volume(reference, image.GetSpacing()).volume_ml

    def display(array: np.ndarray) -> np.ndarray:
        as_image = sitk.GetImageFromArray(array.astype(np.uint8))
        as_image.CopyInformation(image)
        return to_display(as_image)[0] > 0

    shown_image, spacing_mm = to_display(image)
    shown_mask = display(mask)
    shown_reference = None if reference is None else display(reference)
    paths = case_files(output_dir, case)
    for path in paths.values():
        refuse_existing_output(path, overwrite)  # before any is written: a case is made whole or not at all
    mesh = surface_mesh(mask, image) if mask.any() else None  # an empty mask has no surface
    title = f"{case}: {volume_ml:.1f} mL"
    surface_stl, surface_png = (paths["surface.stl"], paths["surface.png"]) if mesh is not None else (None, None)
    with ExitStack() as placed_on_exit:  # in reverse order: the page last
        staged = {kind: placed_on_exit.enter_context(atomic_output(paths[kind], overwrite))
                  for kind in ("page", "montage.png", "slices.gif", *(("surface.stl", "surface.png") if surface_stl else ()))}
        write_montage(staged["montage.png"], shown_image, shown_mask, shown_reference, spacing_mm, title)
        write_slice_gif(staged["slices.gif"], shown_image, shown_mask, shown_reference, spacing_mm)
        if mesh is not None:
            write_surface(staged["surface.stl"], staged["surface.png"], mesh, title)
        report = CaseReport(
            case, volume_ml, paths["montage.png"], paths["slices.gif"], surface_stl, surface_png,
            0.0 if mesh is None else float(mesh.volume) / 1000.0,
            reference_ml, None if reference is None else dice(mask, reference), height_cm, weight_kg, qc, qc_reasons,
        )
        # The mesh goes with this call: a cohort's summary keeps only the measurements.
        staged["page"].write_text(case_page(report, mesh, made_from), encoding="utf-8")
        with deferred_signals():
            placing = _placing_marker(output_dir, case)
            placing.touch()  # a process killed meanwhile leaves it, and the next run clears the case
            if surface_stl is None:  # an earlier surface beside a page that shows none would pass for it
                for kind in ("surface.stl", "surface.png"):
                    paths[kind].unlink(missing_ok=True)
            placed_on_exit.close()
            placing.unlink()
    return report


def _placing_marker(output_dir: Path, case: str) -> Path:
    """The file that says a case's files are being placed (``report_case``)."""
    return output_dir / f".placing-{case}"


def clear_interrupted_placing(output_dir: Path, case: str) -> None:
    """Remove a case's files where a run was killed while it placed them: its own, in any mix."""
    placing = _placing_marker(output_dir, case)
    if placing.exists():
        for path in case_files(output_dir, case).values():
            path.unlink(missing_ok=True)
        placing.unlink()


def case_files(output_dir: Path, case: str) -> dict[str, Path]:
    """The files ``report_case`` writes for a case, by kind: its pictures and its page."""
    return {**{kind: output_dir / f"{case}_{kind}" for kind in ("montage.png", "slices.gif", "surface.stl", "surface.png")},
            "page": output_dir / case_page_name(case)}


def case_inputs(case: CaseInput, mask: Path, reference: Path | None, height_cm: float | None,
                weight_kg: float | None, qc: str, qc_reasons: str) -> dict:
    """What a case's pictures and page are made from: the scan, mask and reference (SHA-256), the
    clinical values, the quality flag, and this package's version, which draws them."""
    return {"image_sha256": case_sha256(case), "mask_sha256": file_sha256(mask),
            "reference_sha256": None if reference is None else file_sha256(reference),
            "height_cm": height_cm, "weight_kg": weight_kg, "qc": qc, "qc_reasons": qc_reasons,
            "leftatriumseg_version": __version__}


def kept_case(output_dir: Path, case: str, made_from: dict) -> CaseReport | None:
    """The case's report from an earlier run into ``output_dir``, if its page records that it was
    made from ``made_from`` and every file it shows is there; None where it has no page.

    Raises
    ------
    LeftAtriumSegError
        For a page made from something else, or by another version, or whose pictures are gone.
    """
    paths = case_files(output_dir, case)
    if not paths["page"].is_file():
        return None
    again = f"--overwrite draws {case} again"
    found = CASE_RECORD.search(paths["page"].read_text(encoding="utf-8", errors="replace"))
    try:
        record = json.loads(found["record"]) if found else None
    except ValueError:
        record = None
    if not (isinstance(record, dict) and isinstance(record.get("made_from"), dict)
            and {"volume_ml", "mesh_volume_ml", "reference_ml", "dice", "surface"} <= set(record)):
        raise LeftAtriumSegError(f"{paths['page']}: exists, but records no inputs (made by a version before 0.17, or "
                                 f"edited); {again}")
    if record["made_from"] != made_from:
        differ = [name for name, value in made_from.items() if record["made_from"].get(name) != value]
        raise LeftAtriumSegError(f"{paths['page']}: exists, made from other inputs than now ({', '.join(differ)}); {again}")
    surface = record["surface"]
    shown = [paths["montage.png"], paths["slices.gif"], *((paths["surface.stl"], paths["surface.png"]) if surface else ())]
    if gone := [path.name for path in shown if not path.is_file()]:
        raise LeftAtriumSegError(f"{paths['page']}: exists, but not {', '.join(gone)}; {again}")
    return CaseReport(case, record["volume_ml"], paths["montage.png"], paths["slices.gif"],
                      paths["surface.stl"] if surface else None, paths["surface.png"] if surface else None,
                      record["mesh_volume_ml"], record["reference_ml"], record["dice"],
                      made_from["height_cm"], made_from["weight_kg"], made_from["qc"], made_from["qc_reasons"])


PLOTLY_JS = "plotly.min.js"
# The block of a case page that records what the page was made from and what it measured.
CASE_RECORD = re.compile(r'<script type="application/json" id="case-record">(?P<record>.*?)</script>', re.DOTALL)
PAGE_STYLE = """body{font-family:sans-serif;margin:2em} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right} td.text,th.text{text-align:left}
td.text,h1,h2{overflow-wrap:anywhere;max-width:40em}
tr.review{background:#fff3d6} tr.failed{background:#eeeeee} .row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start} img{max-width:520px}
img.slices{width:400px;max-height:600px;object-fit:contain;image-rendering:pixelated}"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{PAGE_STYLE}</style><script src="{PLOTLY_JS}"></script></head><body>\n{body}\n</body></html>')


def _figure_html(figure: go.Figure, div_id: str) -> str:
    # A fixed id, not plotly's random one: the same report makes the same page.
    return figure.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True}, div_id=div_id)


def case_page_name(case: str) -> str:
    """File name of a case's page, ``CASE.html``."""
    return f"{case}.html"


def _link(file_name: str) -> str:
    """A file beside the page as an attribute value: a name with ``#`` or ``%`` is a path, not a
    fragment or an escape."""
    return html.escape(urllib.parse.quote(file_name))


def _plot_text(text: str) -> str:
    """``text`` shown as it is in a plotly title or label, which would read ``<b>``, ``<a href=...>``
    and the like in it as markup (plotly.js turns the entities back into characters)."""
    return html.escape(text, quote=False)


def _surface_html(case: str, mesh: trimesh.Trimesh | None) -> str:
    if mesh is None:
        return "<p>No surface: the mask is empty.</p>"
    # float32 places a vertex to within 0.01 micrometre and halves the page's largest part.
    vertices, faces = np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces)
    surface = go.Figure(go.Mesh3d(x=vertices[:, 0], y=vertices[:, 1], z=vertices[:, 2],
                                  i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
                                  color=f"rgb{PREDICTION_RGB}", flatshading=False))
    surface.update_layout(title=_plot_text(f"{case}: surface (drag to rotate)"), width=520, height=460,
                          scene={"aspectmode": "data", "xaxis_title": "L (mm)", "yaxis_title": "P (mm)",
                                 "zaxis_title": "S (mm)"})
    return _figure_html(surface, "surface")


def case_page(report: CaseReport, mesh: trimesh.Trimesh | None, made_from: dict | None = None) -> str:
    """The case's page, ``CASE.html``: its volumes, quality flag, montage, slice GIF and ``mesh``, the
    mask's surface (``surface_mesh``; None for an empty mask), rotatable. It keeps the measurements
    and ``made_from`` in a record (``CASE_RECORD``) for a later run to take the case up again.
    """
    facts = [f"left atrium {report.volume_ml:.1f} mL"]
    if report.reference_ml is not None:
        facts.append(f"reference {report.reference_ml:.1f} mL, Dice {report.dice:.3f}")
    if report.volume_index is not None:
        facts.append(f"LAVI {report.volume_index.ml_per_m2:.{LAVI_DECIMALS}f} mL/m², {report.volume_index.grade}")
    if report.qc:
        facts.append(f"quality check: {report.qc}" + (f" ({report.qc_reasons})" if report.qc_reasons else ""))
    body = (f'<p><a href="report.html">all cases</a></p><h1>{html.escape(report.case)}</h1>'
            f"<p>{html.escape('; '.join(facts))}.</p>"
            f"<p>Orange contours: prediction{'; blue: reference' if report.reference_ml is not None else ''}.</p>"
            '<div class="row">'
            f'<img alt="{html.escape(report.case)}: slices through the atrium with the contours" '
            f'src="{_link(report.montage_png.name)}">'
            f'<img class="slices" alt="{html.escape(report.case)}: every slice in turn with the contours" '
            f'src="{_link(report.slices_gif.name)}">'
            + _surface_html(report.case, mesh) + "</div>")
    if report.surface_stl is not None:
        body += (f'<p>The surface as a mesh, <a href="{_link(report.surface_stl.name)}">{html.escape(report.surface_stl.name)}</a>'
                 f' (STL, mm, LPS), and as a picture, <a href="{_link(report.surface_png.name)}">'
                 f"{html.escape(report.surface_png.name)}</a>.</p>")
    record = {"made_from": made_from, "volume_ml": report.volume_ml, "mesh_volume_ml": report.mesh_volume_ml,
              "reference_ml": report.reference_ml, "dice": report.dice, "surface": mesh is not None}
    escaped = json.dumps(record).replace("</", "<\\/")  # a JSON string holding "</script>" cannot end the block
    body += f'<script type="application/json" id="case-record">{escaped}</script>'
    return _page(f"LeftAtriumSeg: {report.case}", body)


def _agreement_section(cases: list[CaseReport], reported: int) -> str:
    """Predicted against reference volumes and their Bland-Altman agreement, over ``cases`` (those
    with a reference) of the ``reported`` ones."""
    predicted = np.array([c.volume_ml for c in cases])
    reference = np.array([c.reference_ml for c in cases])
    names = [_plot_text(c.case) for c in cases]
    scatter = go.Figure(go.Scatter(x=reference, y=predicted, mode="markers", text=names, name="cases"))
    limit = [0, float(max(predicted.max(), reference.max()) * 1.1)]
    scatter.add_trace(go.Scatter(x=limit, y=limit, mode="lines", name="identity", line={"dash": "dash"}))
    scatter.update_layout(title="Predicted vs reference volume", xaxis_title="reference (mL)",
                          yaxis_title="predicted (mL)", width=520, height=460)
    text = ""
    bland = go.Figure(go.Scatter(x=(predicted + reference) / 2, y=predicted - reference, mode="markers", text=names,
                                 name="cases"))
    if len(cases) > 1:
        agreement = bland_altman(predicted, reference)
        for level, label in ((agreement["bias_ml"], f"bias {agreement['bias_ml']:+.1f} mL"),
                             (agreement["upper_ml"], "+1.96 SD"), (agreement["lower_ml"], "-1.96 SD")):
            bland.add_hline(y=level, line_dash="dot", annotation_text=label)
        shares = (f"; in % of the reference volume {agreement['bias_pct']:+.1f}% ({agreement['lower_pct']:+.1f}% to "
                  f"{agreement['upper_pct']:+.1f}%)" if math.isfinite(agreement["bias_pct"]) else "")
        share = f" ({agreement['mae_pct']:.1f}%)" if math.isfinite(agreement["mae_pct"]) else ""
        text = (f"<p>Bland-Altman: bias {agreement['bias_ml']:+.1f} mL, 95% limits of agreement "
                f"{agreement['lower_ml']:+.1f} to {agreement['upper_ml']:+.1f} mL{shares}; "
                f"mean absolute error {agreement['mae_ml']:.1f} mL{share}.</p>")
    bland.update_layout(title="Bland-Altman", xaxis_title="mean of predicted and reference (mL)",
                        yaxis_title="predicted - reference (mL)", width=520, height=460)
    scope = "" if len(cases) == reported else f"<p>Over the {len(cases)} of {reported} cases that have a reference.</p>"
    return ('<h2>Agreement with reference</h2>' + scope + text + '<div class="row">' + _figure_html(scatter, "agreement")
            + _figure_html(bland, "bland-altman") + "</div>")


def _rows_naming(rows: list[dict], mask: Path) -> list[dict]:
    """A case's rows, in every table, that name this mask file as their output."""
    return [row for row in rows if Path(row.get("output") or "").name == mask.name]


def _record_of(rows: list[dict], mask: Path) -> dict | None:
    """The row among a case's rows in every table that records this very mask file; None for a
    mask replaced or edited since, or copied in."""
    return next((row for row in _rows_naming(rows, mask) if mask_in_place(row, mask.parent)), None)


def write_html_report(path: Path, cases: list[CaseReport], overwrite: bool = False, made_by: str = "",
                      left_out: Sequence[tuple[str, str]] = ()) -> None:
    """Write the summary page: every case in one table, and the volume plots.

    Cases left out come first, then flagged cases, with their reasons, then those no table
    records; each reported case is linked to its page (``case_page``); where cases have a
    reference, the agreement with it follows. It embeds no picture, so it opens at once for
    thousands of cases; plotly.js is written beside it once.

    Parameters
    ----------
    path : Path
        The page, ``report.html``.
    cases : list of CaseReport
    overwrite : bool, optional
        Replace an existing page (plotly.js beside it is always replaced).
    made_by : str, optional
        What made the masks (model, model file, cleanup), a sentence for the page's head.
    left_out : sequence of (str, str), optional
        Cases with no pictures and why: ``segment`` or the report failed on them.
    """
    with atomic_output(path.parent / PLOTLY_JS, overwrite=True) as temporary:
        temporary.write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    cases = sorted(cases, key=lambda c: ({"review": 0, "": 1}.get(c.qc, 2), c.case))
    referenced = [c for c in cases if c.reference_ml is not None]
    has_lavi = any(c.volume_index is not None for c in cases)
    columns = ["case", "quality check", "LA volume (mL)", *(["BSA (m²)", "LAVI (mL/m²)", "grade"] if has_lavi else []),
               *(["reference (mL)", "Dice"] if referenced else [])]
    text = ' class="text"'  # left-aligned: words, not numbers
    header = "<tr>" + "".join(f'<th scope="col"{text if name in ("case", "quality check") else ""}>{name}</th>'
                              for name in columns) + "</tr>"
    empty_cells = "<td></td>" * (1 + 3 * has_lavi + 2 * bool(referenced))
    body = [f'<tr class="failed"><td class="text">{html.escape(case)}</td><td class="text">{html.escape(reason)}</td>'
            f"{empty_cells}</tr>" for case, reason in sorted(left_out)]
    for c in cases:
        flag = html.escape(c.qc or "not recorded") + (f": {html.escape(c.qc_reasons)}" if c.qc_reasons else "")
        row = (f'<tr class="{html.escape(c.qc)}"><td class="text"><a href="{_link(case_page_name(c.case))}">'
               f'{html.escape(c.case)}</a></td><td class="text">{flag}</td><td>{c.volume_ml:.1f}</td>')
        if has_lavi:
            index = c.volume_index
            row += (f"<td>{index.bsa_m2:.2f}</td><td>{index.ml_per_m2:.{LAVI_DECIMALS}f}</td><td>{index.grade}</td>"
                    if index is not None else "<td></td><td></td><td></td>")
        if referenced:
            row += f"<td>{c.reference_ml:.1f}</td><td>{c.dice:.3f}</td>" if c.reference_ml is not None else "<td></td><td></td>"
        body.append(row + "</tr>")
    volumes = go.Figure(go.Histogram(x=[c.volume_ml for c in cases], marker_color=f"rgb{PREDICTION_RGB}"))
    volumes.update_layout(title="Left-atrial volumes", xaxis_title="volume (mL)", yaxis_title="cases", width=520, height=400)
    flagged = sum(c.qc == "review" for c in cases)
    reasons = reason_counts(c.qc_reasons for c in cases)
    sections = '<div class="row">' + _figure_html(volumes, "volumes") + "</div>"
    if referenced:
        sections += _agreement_section(referenced, len(cases))
    failed = (f"{len(left_out)} without pictures because segmentation or the report failed on them (listed first), "
              if left_out else "")
    page = _page("LeftAtriumSeg report", f"""<h1>LeftAtriumSeg report</h1>
<p>{len(cases) + len(left_out)} case(s): {failed}{flagged} flagged for review{f" ({html.escape(reasons)})" if reasons else ""}, listed {"next" if left_out else "first"}: look at them before using their volumes.
Each case's name opens its page: slices with contours, a slice animation and a rotatable surface.
Volumes are voxel count times voxel volume.</p>
{f"<p>Masks made by: {html.escape(made_by)}.</p>" if made_by else ""}
<table><caption>Every case: flagged and failed first</caption>{header}{''.join(body)}</table>
{sections}""")
    with atomic_output(path, overwrite) as temporary:
        temporary.write_text(page, encoding="utf-8")


def _makers_of(results: dict[str, dict], reports: list[CaseReport]) -> str:
    """What made the reported masks, from the tables that ``segment`` wrote beside them."""
    makers = Counter(mask_maker(results.get(report.case, {})) for report in reports)
    return "; ".join(f"{maker} ({count} of {len(reports)} cases)" for maker, count in makers.most_common())


def write_report(images: list[str], predictions: Path, labels: Path | None,
                 clinical: dict[str, tuple[float, float] | None],
                 output_dir: Path, overwrite: bool = False, quiet: bool = False,
                 clinical_path: str | None = None) -> tuple[list[CaseReport], int]:
    """Pictures of every case of ``images`` that has a mask in ``predictions``, and ``report.html``.

    An image takes its case name from the table row that names it as ``input`` (a manifest's
    ``case`` column may have named it otherwise), else from its file name.

    A case whose files cannot be used gets one ``error:`` line on standard error and is listed
    without pictures, as is an image without a mask whose table row says ``segment`` failed on it.

    Parameters
    ----------
    images : list of str
        Image files and folders (``io.find_cases``).
    predictions : Path
        Folder of the predicted masks, with the tables ``segment`` wrote beside them.
    labels : Path or None
        Reference masks, drawn and scored.
    clinical : dict of str to (float, float) or None
        ``case -> (height_cm, weight_kg)``, None where one is missing (``batch.read_clinical``).
    output_dir : Path
    overwrite : bool, optional
        Replace the files of cases made from other inputs than now (cases whose page records the same
        inputs are kept either way), and ``report.html``.
    quiet : bool, optional
        No progress bar and no closing line.
    clinical_path : str, optional
        Where ``clinical`` was read, for a warning that none of its cases is reported.

    Returns
    -------
    reports : list of CaseReport
    failures : int
        The number of cases that failed.

    Raises
    ------
    LeftAtriumSegError
        For an image or folder that does not exist, or no image with a prediction or a recorded
        failure.
    FileExistsError
        For an existing ``report.html`` without ``overwrite``, before any work.
    """
    report_path = output_dir / "report.html"
    refuse_existing_output(report_path, overwrite)
    masks = files_by_case(predictions)
    references = files_by_case(labels) if labels else {}
    matched_cases(masks, references)  # a mask as its own reference would pass with Dice 1
    for entry in map(Path, images):
        if not entry.exists():
            raise LeftAtriumSegError(f"{entry}: not found")
    table_rows = read_results(predictions)
    results: dict[str, dict] = {}  # the rows that speak for the masks reported
    latest = {case: rows[0] for case, rows in table_rows.items()}
    # A scan is known by the name its table row gives it, where one records it as input: a manifest
    # may have named it otherwise, or given its name to another scan. The path as recorded first
    # (two links to one file are two cases, as segment names them), then its target where only one
    # row has that (the scans given by another path to them).
    named = {os.path.abspath(row["input"]): case for case, row in latest.items() if row.get("input")}
    by_target: dict[str, list[str]] = {}
    for case, row in latest.items():
        if row.get("input"):
            by_target.setdefault(os.path.realpath(row["input"]), []).append(case)

    def name_of(scan: CaseInput) -> str:
        targeted = by_target.get(os.path.realpath(scan.path), [])
        return named.get(os.path.abspath(scan.path)) or (targeted[0] if len(targeted) == 1 else scan.case)

    found = [replace(case, case=name_of(case)) for case in find_cases(images)]
    refuse_shared_names(found, "give --images only the scans meant")
    cases = [case for case in found if case.case in masks]
    left_out, failures = [], 0
    for case in found:
        if case.case in masks or case.case not in latest:
            continue
        if latest[case.case].get("status") == "failed":
            left_out.append((case.case, f"segment failed: {latest[case.case].get('error') or 'no reason recorded'}"))
        else:  # a mask deleted since: its row's volume would pass for a result
            line = f"{case.path}: no mask in {predictions}, though its table there says {latest[case.case].get('status')!r}"
            print(f"error: {line}", file=sys.stderr)
            left_out.append((case.case, f"report failed: {line}"))
            failures += 1
    if not cases and not left_out:
        raise LeftAtriumSegError(f"no image in {', '.join(map(str, images))} has a prediction in {predictions}")
    if unreported := sorted(case.case for case in found if case.case not in masks and case.case not in latest):
        print(f"note: {len(unreported)} image(s) have no mask in {predictions} and no row in its table, not reported: "
              f"{some_names(unreported)}", file=sys.stderr)
    names = [case.case for case in cases]
    for warning in clinical_match_warnings(clinical, clinical_path, names):
        print(warning, file=sys.stderr)
    if labels and names and not set(references) & set(names):
        print(f"warning: {labels}: holds no reference mask of a case here (it has "
              f"{some_names(sorted(references), 3) if references else 'none'}; here: {some_names(sorted(names), 3)}): "
              "no Dice is given", file=sys.stderr)
    create_output_folder(output_dir)
    remove_stale_partials(output_dir)
    if overwrite:  # an interrupted run leaves no summary of the pages it replaced
        report_path.unlink(missing_ok=True)
    reports, kept = [], 0
    for case in tqdm(cases, desc="report", unit="case", disable=quiet, dynamic_ncols=True):
        try:
            if case.case == report_path.stem:
                raise LeftAtriumSegError(f"{case.path}: a case named {case.case!r} would take the summary's name, "
                                         f"{report_path.name}; rename the scan and its mask")
            recorded = _record_of(table_rows.get(case.case, []), masks[case.case]) or {}
            if recorded:
                results[case.case] = recorded
            elif masks[case.case].is_file() and any(row.get("output_sha256")
                                                    for row in _rows_naming(table_rows.get(case.case, []), masks[case.case])):
                # (A row without a digest, from before they were recorded, cannot tell an edited mask.)
                tqdm.write(f"warning: {masks[case.case]}: is not the mask its table in {predictions} recorded (edited or "
                           "replaced since segment made it): its quality flag is unknown, it is shown as not recorded",
                           file=sys.stderr)
            height_weight = clinical.get(case.case) or (None, None)
            made_from = case_inputs(case, masks[case.case], references.get(case.case), *height_weight,
                                    recorded.get("qc", ""), recorded.get("qc_reasons", ""))
            if recorded.get("input_sha256") and recorded["input_sha256"] != made_from["image_sha256"]:
                # Drawn over another scan of the same grid, the mask would pass for this one's.
                raise LeftAtriumSegError(
                    f"{case.path}: is not the scan its mask {masks[case.case]} was made from (SHA-256 "
                    f"{made_from['image_sha256'][:12]}..., the table records {recorded['input_sha256'][:12]}...); "
                    "give --images the scans segment read")
            clear_interrupted_placing(output_dir, case.case)
            # An interrupted report goes on where it stopped: a case whose page says it was made
            # from the same inputs is taken as it is, as --overwrite would draw it the same.
            try:
                earlier = kept_case(output_dir, case.case, made_from)
            except LeftAtriumSegError:
                if not overwrite:
                    raise
                earlier = None
            if earlier is not None:
                reports.append(earlier)
                kept += 1
                continue
            image = read_case(case)
            arrays = []
            for path in (masks[case.case], references.get(case.case)):
                if path is None:
                    arrays.append(None)
                    continue
                arrays.append(sitk.GetArrayFromImage(on_grid_of(read_mask(path), image, path, case.path, "image")) > 0)
            reports.append(report_case(case.case, image, arrays[0], arrays[1], output_dir, overwrite, *height_weight,
                                       recorded.get("qc", ""), recorded.get("qc_reasons", ""), made_from))
        except (LeftAtriumSegError, ValueError, RuntimeError, OSError) as error:
            failures += 1
            line = error_line(error, case.path, masks[case.case], references.get(case.case),
                              *case_files(output_dir, case.case).values())
            tqdm.write(f"error: {line}", file=sys.stderr)  # on a line of its own, under the progress bar
            left_out.append((case.case, f"report failed: {line}"))
    if overwrite:  # an earlier run's pictures of a case now listed without them would pass for its own
        for case, _ in left_out:
            for path in case_files(output_dir, case).values():
                if path != report_path:
                    path.unlink(missing_ok=True)
    if reports or left_out:
        write_html_report(report_path, reports, overwrite, _makers_of(results, reports), left_out)
        if not quiet:
            pictured = f" ({len(left_out)} without pictures: segment or the report failed on them)" if left_out else ""
            taken_up = f" ({kept} kept from an earlier run)" if kept else ""
            print(f"report of {len(reports) + len(left_out)} case(s){pictured}{taken_up}: {report_path}")
    return reports, failures
