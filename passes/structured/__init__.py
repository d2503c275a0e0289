"""Structured pruning on `torch.export` graphs: dependency groups, importance, plans, shrinking.

    analysis = find_dependency_groups(program)          # what must be removed together, and what may not
    plan = plan_structured_pruning(program, 0.5, analysis=analysis, criterion="l2")
    small = ShrinkChannelsPass(plan)(program).program   # physically smaller
    masked = MaskChannelsPass(plan)(program).program    # same shapes, removed slices zero (the reference)
"""

from .bn_prior import BnPrior, ChannelMoments, compensate_removed_means, input_moments
from .dependency import DependencyAnalysis, DependencyGroup, GroupMember, UnitKind, find_dependency_groups
from .mask_channels import MaskChannelsPass
from .plan import CRITERIA, StructuredPlan, axis_keep, group_importance, plan_structured_pruning, taylor_gradients
from .shrink_channels import ShrinkChannelsPass

__all__ = [
    "DependencyAnalysis",
    "DependencyGroup",
    "GroupMember",
    "UnitKind",
    "find_dependency_groups",
    "CRITERIA",
    "StructuredPlan",
    "plan_structured_pruning",
    "group_importance",
    "taylor_gradients",
    "axis_keep",
    "BnPrior",
    "ChannelMoments",
    "input_moments",
    "compensate_removed_means",
    "MaskChannelsPass",
    "ShrinkChannelsPass",
]
