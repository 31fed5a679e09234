"""Training data: the sequence format, datasets, the synthetic world and benchmark readers."""
