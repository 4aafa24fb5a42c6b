"""Text: health histories, prompt templates and the training formats."""
