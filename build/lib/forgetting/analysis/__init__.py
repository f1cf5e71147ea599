"""Measuring a finished run: the mechanism report (:mod:`~forgetting.analysis.report`), the head study of
one snapshot pair (:mod:`~forgetting.analysis.heads`) and gradient alignment along a stage
(:mod:`~forgetting.analysis.gradients`)."""

from forgetting.analysis.report import ANALYSIS_CODE, analysis_for, analyze_run, load_analysis

__all__ = ["ANALYSIS_CODE", "analysis_for", "analyze_run", "load_analysis"]
