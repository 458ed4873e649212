"""The losses of the method: DiceCE for segmentation, the class-balanced confidence loss,
sharpening and the confidence-gated consistency. All computed in float32 (also under AMP)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

BALANCE_EPS = 1e-6  # as the reference: weight_0 = n_correct / (n_wrong + eps)


def segmentation_loss():
    """MONAI's Dice + cross-entropy, as the reference configures it."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


def correctness(seg_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(B, ...) long: 1 where argmax(seg_logits) equals the label (B, 1, ...), else 0."""
    return (seg_logits.argmax(dim=1) == label[:, 0].long()).long()


def confidence_class_weights(correct: torch.Tensor) -> torch.Tensor:
    """[count(correct == 1) / count(correct == 0), 1]: balances right and wrong voxels."""
    n_wrong = (correct == 0).sum().float()
    n_right = (correct == 1).sum().float()
    return torch.stack([n_right / (n_wrong + BALANCE_EPS), torch.ones((), device=correct.device)])


def confidence_loss(confidence_logits: torch.Tensor, seg_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy of the confidence head against 'the segmentation is right'."""
    with torch.no_grad():
        correct = correctness(seg_logits, label)
        weights = confidence_class_weights(correct)
    return F.cross_entropy(confidence_logits.float(), correct, weight=weights)


def sharpen(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) / (p^(1/T) + (1 - p)^(1/T)), per class (T = 0.1 in the paper)."""
    power = 1.0 / temperature
    p = probabilities.float()
    high, low = p.pow(power), (1.0 - p).pow(power)
    return high / (high + low)


def consistency_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_confidence_logits: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Mean over all voxels and classes of (softmax(student) - sharpen(softmax(teacher)))^2, each voxel
    multiplied by the teacher's rounded confidence when a confidence map is given (CEDS's gate)."""
    student = F.softmax(student_logits.float(), dim=1)
    target = sharpen(F.softmax(teacher_logits.float(), dim=1), temperature).detach()
    distance = (student - target) ** 2
    if teacher_confidence_logits is not None:
        gate = F.softmax(teacher_confidence_logits.float(), dim=1)[:, 1:2].round().detach()
        distance = distance * gate
    return distance.mean()
