"""`evaluate_folder` and `ceds evaluate` on synthetic masks with hand-computed answers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from ceds_deploy.errors import CedsError
from ceds_deploy.io import write_volume
from ceds_deploy.qa.evaluate import evaluate_folder, is_prediction_file
from ceds_deploy.qa.metrics import hausdorff95
from ceds_deploy.volume import Geometry

# Anisotropic, and not LPS-aligned: metrics must use the spacing of each array axis.
GRID = Geometry((0.8, 1.0, 2.5), (10.0, -20.0, 30.0), np.diag([-1.0, -1.0, 1.0]), (40, 36, 24))


def box(start, size, shift=(0, 0, 0), grid=GRID) -> np.ndarray:
    mask = np.zeros(grid.shape, np.uint8)
    lo = [s + d for s, d in zip(start, shift)]
    mask[tuple(slice(a, a + n) for a, n in zip(lo, size))] = 1
    return mask


def sphere(radius_mm: float, shift_vox=(0, 0, 0), grid=GRID) -> np.ndarray:
    """A sphere of `radius_mm` (physical) about the grid centre moved by `shift_vox` voxels."""
    idx = np.meshgrid(*[np.arange(n, dtype=float) for n in grid.shape], indexing="ij")
    centre = (np.asarray(grid.shape) - 1) / 2 + np.asarray(shift_vox)
    dist2 = sum(((i - c) * s) ** 2 for i, c, s in zip(idx, centre, grid.spacing))
    return (dist2 <= radius_mm**2).astype(np.uint8)


def write_pair(
    tmp: Path,
    case: str,
    pred: np.ndarray | None,
    label: np.ndarray | None,
    pred_grid: Geometry = GRID,
    label_grid: Geometry = GRID,
) -> None:
    if pred is not None:
        write_volume(tmp / "pred" / f"{case}.nii.gz", pred, pred_grid)
    if label is not None:
        write_volume(tmp / "labels" / f"{case}.nii.gz", label, label_grid)


def rows_by_case(report):
    return {r.case: r for r in report.rows}


@pytest.mark.parametrize("axis,k", [(0, 2), (2, 1), (1, 3)])
def test_box_shifted_along_one_axis_gives_exact_dice_and_hd95(tmp_path, axis, k):
    # Boxes of a voxels shifted by k along `axis`: Dice = (a - k) / a. Every edge voxel of one box's
    # trailing face is exactly k * spacing from the other's edge (and no edge voxel is farther), and
    # that face is > 5% of the edge voxels, so HD95 = k * spacing exactly.
    size = (12, 10, 8)
    shift = tuple(k if a == axis else 0 for a in range(3))
    write_pair(tmp_path, "box", box((10, 10, 6), size, shift), box((10, 10, 6), size))
    report = evaluate_folder(tmp_path / "pred", tmp_path / "labels")
    row = rows_by_case(report)["box"]
    assert row.status == "ok", row.message
    assert row.dice == pytest.approx((size[axis] - k) / size[axis], abs=1e-12)
    assert row.hd95_mm == pytest.approx(k * GRID.spacing[axis], abs=1e-5)
    expected_ml = np.prod(size) * np.prod(GRID.spacing) / 1000.0
    assert row.pred_ml == pytest.approx(expected_ml) and row.true_ml == pytest.approx(expected_ml)
    assert row.volume_diff_ml == pytest.approx(0.0, abs=1e-12)


def test_sphere_shifted_along_one_axis(tmp_path):
    # Continuous theory for a sphere of radius R moved by d: a surface point at polar angle t is
    # d*|cos t| from the other surface, and |cos t| is uniform on [0, 1] over the sphere, so
    # HD95 = 0.95 d and the maximum HD = d; Dice = lens / sphere = (4R + d)(2R - d)^2 / (16 R^3).
    radius, k, axis = 9.0, 3, 0
    d = k * GRID.spacing[axis]
    pred = sphere(radius, (k, 0, 0))
    true = sphere(radius)
    write_pair(tmp_path, "ball", pred, true)
    row = evaluate_folder(tmp_path / "pred", tmp_path / "labels").rows[0]
    assert row.status == "ok", row.message
    assert 0.85 * d <= row.hd95_mm <= d + 1e-5
    assert row.dice == pytest.approx((4 * radius + d) * (2 * radius - d) ** 2 / (16 * radius**3), abs=0.03)
    voxel_ml = float(np.prod(GRID.spacing)) / 1000.0
    assert row.pred_ml == pytest.approx(pred.sum() * voxel_ml, rel=1e-6)
    assert row.true_ml == pytest.approx(true.sum() * voxel_ml, rel=1e-6)
    assert row.true_ml == pytest.approx(4 / 3 * math.pi * radius**3 / 1000.0, rel=0.05)


def test_hausdorff95_matches_a_brute_force_definition():
    # Independent implementation: edge voxels = mask minus its 6-connected erosion, distances in mm
    # with a KD-tree, symmetric = max of the two directed 95th percentiles.
    from scipy import ndimage
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(3)
    spacing = (0.7, 1.3, 2.0)
    a = ndimage.binary_dilation(rng.random((30, 28, 16)) > 0.995, iterations=3)
    b = ndimage.binary_dilation(rng.random((30, 28, 16)) > 0.995, iterations=3)

    def edge_points(m):
        edges = m & ~ndimage.binary_erosion(m)
        return np.argwhere(edges) * np.asarray(spacing)

    pa, pb = edge_points(a), edge_points(b)
    directed = [np.percentile(cKDTree(q).query(p)[0], 95) for p, q in ((pa, pb), (pb, pa))]
    assert hausdorff95(a, b, spacing) == pytest.approx(max(directed), rel=1e-5)


def test_empty_masks(tmp_path):
    blob = box((10, 10, 6), (6, 6, 4))
    empty = np.zeros(GRID.shape, np.uint8)
    write_pair(tmp_path, "both_empty", empty, empty)
    write_pair(tmp_path, "missed", empty, blob)
    write_pair(tmp_path, "false_alarm", blob, empty)
    write_pair(tmp_path, "perfect", blob, blob)
    report = evaluate_folder(tmp_path / "pred", tmp_path / "labels")
    rows = rows_by_case(report)
    assert all(r.status == "ok" for r in report.rows)
    assert (rows["both_empty"].dice, rows["both_empty"].hd95_mm, rows["both_empty"].rel_volume_diff_pct) == (
        1.0,
        0.0,
        0.0,
    )
    assert rows["missed"].dice == 0.0 and math.isinf(rows["missed"].hd95_mm)
    assert rows["missed"].rel_volume_diff_pct == pytest.approx(-100.0)
    assert rows["false_alarm"].dice == 0.0 and math.isinf(rows["false_alarm"].hd95_mm)
    assert math.isinf(rows["false_alarm"].rel_volume_diff_pct)
    assert (rows["perfect"].dice, rows["perfect"].hd95_mm) == (1.0, 0.0)
    # Means: Dice over all 4, HD95 over the 2 where it is defined.
    assert report.means["dice"] == pytest.approx(0.5)
    assert report.counts["dice"] == 4 and report.counts["hd95_mm"] == 2
    assert report.means["hd95_mm"] == 0.0
    assert report.counts["rel_volume_diff_pct"] == 3


def test_csv_is_written_with_rows_means_and_inf(tmp_path):
    blob = box((10, 10, 6), (6, 6, 4))
    write_pair(tmp_path, "a", blob, blob)
    write_pair(tmp_path, "b", np.zeros_like(blob), blob)
    report = evaluate_folder(tmp_path / "pred", tmp_path / "labels")
    assert report.csv_path == tmp_path / "pred" / "evaluation.csv"
    with open(report.csv_path, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["case"] for r in table] == ["a", "b", "mean"]
    assert table[0]["status"] == "ok" and float(table[0]["dice"]) == 1.0
    assert table[1]["hd95_mm"] == "inf" and float(table[1]["dice"]) == 0.0
    assert float(table[2]["dice"]) == pytest.approx(0.5) and float(table[2]["hd95_mm"]) == 0.0
    assert "hd95_mm over 1" in table[2]["message"]
    # An explicit path; a second run replaces the file, no temp files are left behind.
    out = tmp_path / "results" / "scores.csv"
    assert evaluate_folder(tmp_path / "pred", tmp_path / "labels", out).csv_path == out
    evaluate_folder(tmp_path / "pred", tmp_path / "labels", out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.csv"]


def test_segment_side_files_are_not_predictions(tmp_path):
    from ceds_deploy.inference import outputs as pipeline

    blob = box((10, 10, 6), (6, 6, 4))
    write_pair(tmp_path, "case1", blob, blob)
    pred = tmp_path / "pred"
    write_volume(pred / f"case1{pipeline.CONFIDENCE_SUFFIX}", blob.astype(np.float32) * 0.7, GRID)
    write_volume(pred / f"case1{pipeline.PROBABILITIES_SUFFIX}", blob.astype(np.float32) * 0.9, GRID)
    (pred / "report.csv").write_text("case,status\n")
    (pred / "report.json").write_text("{}")
    (pred / f"case1{pipeline.PREVIEW_SUFFIX}").write_bytes(b"\x89PNG\r\n\x1a\n")
    report = evaluate_folder(pred, tmp_path / "labels")
    assert [(r.case, r.status) for r in report.rows] == [("case1", "ok")]
    assert not is_prediction_file(pred / "x_confidence.mha") and is_prediction_file(pred / "x.mha")


def test_grid_mismatch_is_an_error_row_naming_the_file(tmp_path):
    blob = box((10, 10, 6), (6, 6, 4))
    write_pair(tmp_path, "good", blob, blob)
    write_pair(tmp_path, "shifted", blob, blob, pred_grid=GRID.with_(origin=(12.0, -20.0, 30.0)))
    other = GRID.with_(shape=(40, 36, 20))
    write_pair(tmp_path, "cropped", blob[:, :, :20], blob, pred_grid=other)
    report = evaluate_folder(tmp_path / "pred", tmp_path / "labels")
    rows = rows_by_case(report)
    assert rows["good"].status == "ok"
    for case in ("shifted", "cropped"):
        assert rows[case].status == "error"
        assert f"{case}.nii.gz" in rows[case].message and "grid differs" in rows[case].message
    assert "origin" in rows["shifted"].message and "(40, 36, 20)" in rows["cropped"].message
    assert report.counts["dice"] == 1


def test_label_with_values_other_than_0_and_1_is_an_error_naming_it(tmp_path):
    blob = box((10, 10, 6), (6, 6, 4))
    write_pair(tmp_path, "multi", blob, blob * 2 + box((1, 1, 1), (2, 2, 2)))
    row = evaluate_folder(tmp_path / "pred", tmp_path / "labels").rows[0]
    assert row.status == "error"
    assert str(tmp_path / "labels" / "multi.nii.gz") in row.message
    assert "other than 0 and 1" in row.message and "2" in row.message


def test_missing_and_unmatched_labels_are_listed(tmp_path):
    blob = box((10, 10, 6), (6, 6, 4))
    write_pair(tmp_path, "paired", blob, blob)
    write_pair(tmp_path, "no_label", blob, None)
    write_pair(tmp_path, "no_pred", None, blob)
    write_volume(tmp_path / "labels" / "paired_twin.mha", blob, GRID)
    report = evaluate_folder(tmp_path / "pred", tmp_path / "labels")
    rows = rows_by_case(report)
    assert rows["paired"].status == "ok"
    assert rows["no_label"].status == "no_label" and "no label named no_label" in rows["no_label"].message
    assert report.missing_labels == [tmp_path / "pred" / "no_label.nii.gz"]
    assert [p.name for p in report.unmatched_labels] == ["no_pred.nii.gz", "paired_twin.mha"]


def test_a_label_in_another_format_is_matched_and_duplicates_are_errors(tmp_path):
    blob = box((10, 10, 6), (6, 6, 4))
    write_volume(tmp_path / "pred" / "c1.nii.gz", blob, GRID)
    write_volume(tmp_path / "labels" / "c1.nrrd", blob, GRID)
    write_volume(tmp_path / "pred" / "c2.nii.gz", blob, GRID)
    write_volume(tmp_path / "labels" / "c2.nii.gz", blob, GRID)
    write_volume(tmp_path / "labels" / "c2.mha", blob, GRID)
    rows = rows_by_case(evaluate_folder(tmp_path / "pred", tmp_path / "labels"))
    assert rows["c1"].status == "ok" and rows["c1"].dice == 1.0
    assert rows["c2"].status == "error" and "2 labels" in rows["c2"].message


def test_folders_without_anything_to_compare_fail_clearly(tmp_path):
    blob = box((10, 10, 6), (6, 6, 4))
    (tmp_path / "empty").mkdir()
    write_pair(tmp_path, "a", blob, None)
    write_volume(tmp_path / "labels" / "b.nii.gz", blob, GRID)
    with pytest.raises(CedsError, match="no predicted masks"):
        evaluate_folder(tmp_path / "empty", tmp_path / "labels")
    with pytest.raises(CedsError, match="none of the 1 predictions"):
        evaluate_folder(tmp_path / "pred", tmp_path / "labels")
    with pytest.raises(CedsError, match="does not exist"):
        evaluate_folder(tmp_path / "nowhere", tmp_path / "labels")


def _app():
    import typer

    from ceds_deploy.cli.evaluate import evaluate

    app = typer.Typer()
    app.command()(evaluate)
    return app


def test_cli_prints_table_means_and_csv_path(tmp_path):
    from typer.testing import CliRunner

    size = (12, 10, 8)
    write_pair(tmp_path, "case_a", box((10, 10, 6), size, (2, 0, 0)), box((10, 10, 6), size))
    write_pair(tmp_path, "case_b", np.zeros(GRID.shape, np.uint8), box((10, 10, 6), size))
    write_pair(tmp_path, "case_c", box((10, 10, 6), size), None)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        _app(), [str(tmp_path / "pred"), str(tmp_path / "labels"), "--out", str(out)], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert "case_a" in text and "case_b" in text and "1.60" in text  # HD95 = 2 voxels * 0.8 mm
    assert "inf" in text and "mean of 2" in text
    assert "no label for" in text and "case_c" in text
    assert "Wrote" in text and "scores.csv" in text and out.is_file()


def test_cli_exits_1_when_a_case_is_an_error(tmp_path):
    from typer.testing import CliRunner

    blob = box((10, 10, 6), (6, 6, 4))
    write_pair(tmp_path, "ok", blob, blob)
    write_pair(tmp_path, "bad", blob, blob * 3)
    result = CliRunner().invoke(_app(), [str(tmp_path / "pred"), str(tmp_path / "labels")], terminal_width=200)
    assert result.exit_code == 1
    assert "error:" in result.output and "bad.nii.gz" in result.output and "other than 0 and 1" in result.output


def test_cli_help_lists_arguments():
    from typer.testing import CliRunner

    result = CliRunner().invoke(_app(), ["--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "PRED_DIR" in result.output and "LABEL_DIR" in result.output and "--out" in result.output


def test_cli_fails_when_a_label_has_no_prediction(tmp_path):
    """A case that was not predicted would flatter the mean Dice: the scores are written, and the
    command fails naming it (nnU-Net's evaluation is strict the same way)."""
    from typer.testing import CliRunner

    blob = box((10, 10, 6), (6, 6, 4))
    write_pair(tmp_path, "done", blob, blob)
    write_pair(tmp_path, "missed", None, blob)
    result = CliRunner().invoke(_app(), [str(tmp_path / "pred"), str(tmp_path / "labels")], terminal_width=200)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "error: 1 label(s) have no prediction" in text and "missed.nii.gz" in text and "mean of 1" in text
