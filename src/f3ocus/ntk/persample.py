"""The per-sample row engine under its earlier name; it lives in :mod:`f3ocus.ntk.rows`."""

from f3ocus.ntk.rows import JacobianPlan, jacobian_plan, per_sample_jacobian_blocks, per_sample_jacobians

__all__ = ["JacobianPlan", "jacobian_plan", "per_sample_jacobian_blocks", "per_sample_jacobians"]
