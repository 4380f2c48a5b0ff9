from engine.evaluation.evaluator import (EVALUATOR_REGISTRY, MSP, EvaluatorBase, OpenSet, OpenSetPrediction,
                                        build_evaluator, split_prediction)
from engine.evaluation.metrics import METRIC_DESCRIPTIONS, OpenSetOutputs, open_set_metrics, register_metric

__all__ = ["EVALUATOR_REGISTRY", "MSP", "EvaluatorBase", "OpenSet", "OpenSetOutputs", "OpenSetPrediction",
           "build_evaluator", "split_prediction", "METRIC_DESCRIPTIONS", "open_set_metrics", "register_metric"]
