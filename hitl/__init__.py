"""hitl package."""
