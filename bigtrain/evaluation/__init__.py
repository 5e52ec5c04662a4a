"""Downstream evaluation with EleutherAI's lm-eval (an optional extra: `pip install -e .[eval]`).

Held-out loss during training is `bigtrain/train/evaluate.py`; this package scores an export on tasks.
"""
