"""linkedout: knowledge-aware video recommendation with frozen Video-LLMs."""

__version__ = "0.1.0"
