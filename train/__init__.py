"""Training: losses, data readers and the ``mapo-train`` recipe."""
