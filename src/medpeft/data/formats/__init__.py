"""Dataset layouts, one module each."""
