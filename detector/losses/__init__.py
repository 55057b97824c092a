"""Ranking losses (aLRP, AP Loss), self-balancing, the Focal/GIoU baselines and ``build_criterion``."""
from .alrp import ALRPClassification, alrp_loc_loss, alrp_loss
from .ap import APLossFunction, ap_loss
from .basic import decode_unit_anchor, focal_loss, giou_errors, giou_loss, l1_loss, smooth_l1_loss
from .criterion import ALRPCriterion, APCriterion, FocalCriterion, build_criterion
from .global_rank import ddp_loss_scale
from .self_balance import SelfBalance

__all__ = [
    "alrp_loss", "alrp_loc_loss", "ALRPClassification", "ap_loss", "APLossFunction", "SelfBalance",
    "focal_loss", "smooth_l1_loss", "l1_loss", "giou_loss", "giou_errors", "decode_unit_anchor",
    "build_criterion", "ALRPCriterion", "APCriterion", "FocalCriterion", "ddp_loss_scale",
]
