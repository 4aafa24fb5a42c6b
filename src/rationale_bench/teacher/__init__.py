"""Teacher: the OpenAI-compatible client, rationale generation, QC and review."""
