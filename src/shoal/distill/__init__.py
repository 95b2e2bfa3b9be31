"""Training: teacher fine-tuning, stacking distillation and the boosting ensemble."""
