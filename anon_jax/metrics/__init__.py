"""Evaluation metrics: ReId retrieval (CMC, mAP)."""
