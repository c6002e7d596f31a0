"""Data: image and mask reading, dataset layouts, splits, transforms, synthetic data."""
