"""Evaluation: likelihood metrics of VAEs on a test split, and the images that show a model."""
