"""teams package."""
