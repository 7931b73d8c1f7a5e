"""A simulated search world with known ground truth, and importers for real log layouts."""
