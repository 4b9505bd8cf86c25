"""Evaluation on the scored split (test, or a job's validation part): the metrics of DATASETS.md and per-image
predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from kdbench.models import PoseNet
from kdbench.poses import pose_metrics, rotation_errors_deg, translation_errors
from kdbench.scenes.dataset import PoseDataset

PREDICTION_COLUMNS = ["image", "err_t", "err_r", "x", "y", "z", "qw", "qx", "qy", "qz",
                      "pred_x", "pred_y", "pred_z", "pred_qw", "pred_qx", "pred_qy", "pred_qz"]


@torch.no_grad()
def predict(model: PoseNet, dataset: PoseDataset, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Predicted 7-d poses (N, 7) for a dataset, model in eval mode, centre crops."""
    model.eval()
    out = []
    for x, _ in dataset.batches(batch_size, shuffle=False):
        x = x.to(device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        o = model(x)
        out.append(torch.cat([o.xyz, o.q], 1).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def evaluate(model: PoseNet, dataset: PoseDataset, device: torch.device | str = "cpu",
             batch_size: int = 64) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics (medians, means, accuracy shares) and a per-image prediction table for the dataset's frames."""
    device = torch.device(device)
    pred = predict(model, dataset, device, batch_size)
    return metrics_from_predictions(pred, dataset.true_poses.astype(np.float64), dataset.image_paths)


def metrics_from_predictions(pred: np.ndarray, gt: np.ndarray,
                             images: list[str]) -> tuple[dict[str, float], pd.DataFrame]:
    """Metrics and the prediction table from predicted and true 7-d poses."""
    err_t = translation_errors(pred[:, :3], gt[:, :3])
    err_r = rotation_errors_deg(pred[:, 3:], gt[:, 3:])
    table = pd.DataFrame(np.column_stack([err_t, err_r, gt, pred]), columns=PREDICTION_COLUMNS[1:])
    table.insert(0, "image", images)
    return pose_metrics(err_t, err_r), table
