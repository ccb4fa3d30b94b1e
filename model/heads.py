"""The uncertainty-aware box head and the RoI heads that use it.

torchvision's ``FastRCNNPredictor`` gives class logits and box deltas; the
synchronic loss (docs/method.md, section 4) and HUA's localisation metric (section 2)
also need a log-variance per box coordinate, and HUA's gate and metrics need
the full softmax of every detection. The heads
here add exactly that and leave everything else to torchvision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import boxes as box_ops

from model.losses import LossConfig, bounded_log_var, fastrcnn_synchronic_terms


class UncertainBoxPredictor(nn.Module):
    """``FastRCNNPredictor`` with a third linear layer for the log-variance alpha.

    The log-variance layer starts at zero (sigma = 1 everywhere), so a head
    initialised from a plain torchvision checkpoint behaves exactly like it.

    Args:
        in_channels (int): size of the pooled RoI feature.
        num_classes (int): C + 1, background included.
        log_var_bound (float): alpha = bound * tanh(raw / bound) [ours], see
            ``model.losses.bounded_log_var``.
    """

    def __init__(self, in_channels: int, num_classes: int, log_var_bound: float = 5.0) -> None:
        super().__init__()
        self.log_var_bound = log_var_bound
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        self.bbox_log_var = nn.Linear(in_channels, num_classes * 4)
        nn.init.zeros_(self.bbox_log_var.weight)
        nn.init.zeros_(self.bbox_log_var.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x), bounded_log_var(self.bbox_log_var(x), self.log_var_bound)


class UncertaintyRoIHeads(RoIHeads):
    """torchvision's box-only ``RoIHeads`` with uncertainty outputs.

    Training returns the loss terms of ``model.losses`` (or torchvision's two
    terms when ``loss.kind`` is "standard"). Inference returns, per image, the
    usual boxes/labels/scores plus ``probs`` (full softmax of each detection),
    and ``sigmas`` (per-edge sigma of the detection's class).

    ``loss`` (keyword only) is the training's loss, given at construction
    (``build_model(..., loss=TrainConfig.loss)``) and never changed afterwards;
    ``model.train.train`` refuses a model whose heads hold another. A model
    built only for inference keeps the default and never reads it.
    """

    def __init__(self, *args, loss: LossConfig = LossConfig(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss = loss

    @classmethod
    def from_torchvision(
        cls, heads: RoIHeads, predictor: UncertainBoxPredictor, *, loss: LossConfig = LossConfig()
    ) -> UncertaintyRoIHeads:
        """Wrap the pooler, head and thresholds of an existing ``RoIHeads``, training with ``loss``."""
        new = cls(
            heads.box_roi_pool,
            heads.box_head,
            predictor,
            heads.proposal_matcher.high_threshold,
            heads.proposal_matcher.low_threshold,
            heads.fg_bg_sampler.batch_size_per_image,
            heads.fg_bg_sampler.positive_fraction,
            heads.box_coder.weights,
            heads.score_thresh,
            heads.nms_thresh,
            heads.detections_per_img,
            loss=loss,
        )
        return new

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return [], self._training_losses(features, proposals, image_shapes, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression, box_log_var = self.box_predictor(box_features)
        return self._detections(class_logits, box_regression, box_log_var, proposals, image_shapes), {}

    def _training_losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression, box_log_var = self.box_predictor(box_features)
        if self.loss.kind == LossConfig.STANDARD:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        matched_gt = [_matched_boxes(t["boxes"], idx) for t, idx in zip(targets, matched_idxs)]
        return fastrcnn_synchronic_terms(
            class_logits,
            box_regression,
            box_log_var,
            labels,
            regression_targets,
            proposals,
            matched_gt,
            self.box_coder,
            smooth_l1_beta=self.loss.smooth_l1_beta,
            eiou_gamma=self.loss.eiou_gamma,
        )

    def _detections(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        box_log_var: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Decode, threshold and NMS per image, keeping each detection's source RoI."""
        counts = [p.shape[0] for p in proposals]
        boxes = self.box_coder.decode(box_regression, proposals)
        probs = F.softmax(class_logits.float(), -1)
        sigmas = torch.exp(0.5 * box_log_var.float()).reshape(box_log_var.shape[0], -1, 4)
        return [
            self._image_detections(b, p, s, shape)
            for b, p, s, shape in zip(boxes.split(counts), probs.split(counts), sigmas.split(counts), image_shapes)
        ]

    def _image_detections(
        self, boxes: Tensor, probs: Tensor, sigmas: Tensor, image_shape: tuple[int, int]
    ) -> dict[str, Tensor]:
        """One image: ``boxes`` [R, C+1, 4], ``probs`` [R, C+1], ``sigmas`` [R, C+1, 4]."""
        num_rois, num_classes = probs.shape
        boxes = box_ops.clip_boxes_to_image(boxes, image_shape)[:, 1:].reshape(-1, 4)
        scores = probs[:, 1:].reshape(-1)
        labels = torch.arange(1, num_classes, device=probs.device).repeat(num_rois)
        rois = torch.arange(num_rois, device=probs.device).repeat_interleave(num_classes - 1)
        keep = torch.where(scores > self.score_thresh)[0]
        keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
        keep = keep[box_ops.batched_nms(boxes[keep], scores[keep], labels[keep], self.nms_thresh)]
        keep = keep[: self.detections_per_img]
        return {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "scores": scores[keep],
            "probs": probs[rois[keep]],
            "sigmas": sigmas[rois[keep], labels[keep]],
        }


def _matched_boxes(gt_boxes: Tensor, matched_idxs: Tensor) -> Tensor:
    """The ground-truth box matched to each proposal; zeros for an image without boxes."""
    if gt_boxes.numel() == 0:
        return torch.zeros((matched_idxs.shape[0], 4), dtype=torch.float32, device=matched_idxs.device)
    return gt_boxes[matched_idxs.clamp(min=0)]
