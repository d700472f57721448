"""labelassign detector: PyTorch twins of the reference assigners and the training pipeline."""
