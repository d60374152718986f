"""Built-in stages: transform, validate, dedupe, window, saga."""
