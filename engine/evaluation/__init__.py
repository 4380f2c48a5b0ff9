from engine.evaluation.evaluator import EVALUATOR_REGISTRY, EvaluatorBase, OpenSet, build_evaluator
from engine.evaluation.metrics import METRIC_DESCRIPTIONS, OpenSetOutputs, open_set_metrics, register_metric

__all__ = ["EVALUATOR_REGISTRY", "EvaluatorBase", "OpenSet", "OpenSetOutputs", "build_evaluator", "METRIC_DESCRIPTIONS",
           "open_set_metrics", "register_metric"]
