"""Base class of every configuration section (kept apart so concept modules can define their own)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigSection(BaseModel):
    """A config section: unknown keys are errors, so typos never pass silently; assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
