"""Teacher: the OpenAI-compatible client, rationale generation, QC and review."""


class TeacherError(ValueError):
    """The teacher cannot produce rationales as configured."""
