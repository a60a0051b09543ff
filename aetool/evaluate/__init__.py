"""Evaluating trained runs: the noise table (`corrupt`) and the latent space (`embed`)."""
