"""Decision-quality checks of the real judge on simulated canaries (support/quality)."""
