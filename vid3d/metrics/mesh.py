"""Mesh accuracy against a known mesh: symmetric Chamfer distance and F-score on surface samples."""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree


def sample_surface(mesh: trimesh.Trimesh, count: int, seed: int = 0) -> np.ndarray:
    return sample_with_normals(mesh, count, seed)[0]


def sample_with_normals(mesh: trimesh.Trimesh, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points on the surface and the normals of their faces."""
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points), np.asarray(mesh.face_normals)[faces]


def normal_consistency(points: np.ndarray, normals: np.ndarray, true: np.ndarray, true_normals: np.ndarray) -> float:
    """Mean |cosine| between each sample's normal and its nearest sample's on the other surface,
    both ways (the measure of Occupancy Networks and the surface-reconstruction papers; 1 is perfect)."""
    forward = np.abs((normals * true_normals[cKDTree(true).query(points)[1]]).sum(-1))
    backward = np.abs((true_normals * normals[cKDTree(points).query(true)[1]]).sum(-1))
    return float(0.5 * (forward.mean() + backward.mean()))


def chamfer_fscore(predicted: np.ndarray, true: np.ndarray, threshold: float) -> dict[str, float]:
    """Points sampled from a reconstruction and from the truth, in one frame.

    chamfer: mean of accuracy (predicted -> true) and completeness (true -> predicted) distances;
    fscore: harmonic mean of the fractions of each set within `threshold` of the other.
    """
    accuracy = cKDTree(true).query(predicted)[0]
    completeness = cKDTree(predicted).query(true)[0]
    precision, recall = float((accuracy < threshold).mean()), float((completeness < threshold).mean())
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "chamfer": float(0.5 * (accuracy.mean() + completeness.mean())),
        "accuracy": float(accuracy.mean()),
        "completeness": float(completeness.mean()),
        "precision": precision,
        "recall": recall,
        "fscore": fscore,
    }


def crop(points: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Points inside an axis-aligned box (2, 3)."""
    return points[_inside(points, bounds)]


def _inside(points: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    return np.all((points >= bounds[0]) & (points <= bounds[1]), axis=1)


def compare_to_truth(
    mesh: trimesh.Trimesh,
    estimated_cam_to_world: np.ndarray,
    true_cam_to_world: np.ndarray,
    truth: trimesh.Trimesh,
    region: np.ndarray,
    samples: int = 200_000,
) -> dict[str, float]:
    """A reconstructed mesh against the true one, in the true world.

    The reconstruction's world differs from the truth's by a similarity, found from the camera
    centres (estimated vs true, OpenCV camera-to-world, same order). Both meshes are cropped to
    `region` (2, 3), the part of the scene the cameras see; distances are reported as fractions of
    the diagonal of the truth's bounding box, and the F-score at 1% of it. `precision_all` counts
    every predicted sample, uncropped, within 1% of the diagonal of the whole true surface: the
    crop hides background (sky sheets, ground past the true ground's edge), this does not.
    """
    regions = {"region": region}
    return compare_in_regions(mesh, estimated_cam_to_world, true_cam_to_world, truth, regions, samples)["region"]


def compare_in_regions(
    mesh: trimesh.Trimesh,
    estimated_cam_to_world: np.ndarray,
    true_cam_to_world: np.ndarray,
    truth: trimesh.Trimesh,
    regions: dict[str, np.ndarray],
    samples: int = 200_000,
) -> dict[str, dict[str, float]]:
    """compare_to_truth in each of `regions` (name -> box (2, 3)), from one sampling of both surfaces."""
    from vid3d.metrics.poses import similarity

    scale, rotation, translation = similarity(estimated_cam_to_world[:, :3, 3], true_cam_to_world[:, :3, 3])
    vertices = scale * np.asarray(mesh.vertices) @ rotation.T + translation
    aligned = trimesh.Trimesh(vertices, mesh.faces, process=False)
    diagonal = float(np.linalg.norm(truth.bounds[1] - truth.bounds[0]))
    (predicted, predicted_normals), (true, true_normals) = (
        sample_with_normals(aligned, samples),
        sample_with_normals(truth, samples),
    )
    precision_all = float((cKDTree(true).query(predicted)[0] < 0.01 * diagonal).mean())
    results = {}
    for name, region in regions.items():
        result = chamfer_fscore(crop(predicted, region), crop(true, region), threshold=0.01 * diagonal)
        inside, true_inside = _inside(predicted, region), _inside(true, region)
        results[name] = {
            "chamfer_fraction": result["chamfer"] / diagonal,
            "normal_consistency": normal_consistency(
                predicted[inside], predicted_normals[inside], true[true_inside], true_normals[true_inside]
            ),
            "fscore_1pct": result["fscore"],
            "precision": result["precision"],
            "recall": result["recall"],
            "precision_all": precision_all,
            "diagonal": diagonal,
        }
    return results
