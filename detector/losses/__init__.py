"""Ranking losses (aLRP, AP Loss), self-balancing, the Focal/GIoU baselines, the criterion interface and registry."""
from .alrp import ALRPClassification, alrp_loc_loss, alrp_loss
from .ap import APLossFunction, ap_loss
from .basic import GIOU_EPS, decode_unit_anchor, focal_loss, giou_errors, giou_loss, l1_loss, smooth_l1_loss
from .criterion import (CRITERIA, LOSS_TYPES, REG_TYPES, ALRPCriterion, ALRPTerms, APCriterion, Criterion,
                        CriterionBuilder, CriterionHooks, FocalCriterion, RankingCriterion, RegressionLoss,
                        build_criterion, self_balanced_alrp)
from .global_rank import ddp_loss_scale
from .self_balance import SelfBalance

__all__ = [
    "alrp_loss", "alrp_loc_loss", "ALRPClassification", "ap_loss", "APLossFunction", "SelfBalance",
    "focal_loss", "smooth_l1_loss", "l1_loss", "giou_loss", "giou_errors", "decode_unit_anchor", "GIOU_EPS",
    "build_criterion", "ALRPCriterion", "APCriterion", "FocalCriterion", "ddp_loss_scale",
    "CriterionHooks", "RankingCriterion", "Criterion", "CriterionBuilder", "CRITERIA", "LOSS_TYPES", "REG_TYPES",
    "RegressionLoss", "ALRPTerms", "self_balanced_alrp",
]
