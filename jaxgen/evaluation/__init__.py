"""Evaluation: a VAE's likelihoods on a test split, a GAN's D outputs during training, sample quality (FID, KID,
IS, precision/recall over Inception, the offline classifier or a user's features), and the metrics themselves."""
