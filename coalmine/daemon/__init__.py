"""The daemon: per-deployment state machines, routing, and the I/O shell around them."""
