"""liber-features core."""
