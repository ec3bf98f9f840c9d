"""The pipeline's steps (one module each) and the helpers they share."""
