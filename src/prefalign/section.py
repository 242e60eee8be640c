"""The base of every config section: unknown keys are errors."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Unknown keys are errors, not silently ignored: a misspelled `betas` must not run the defaults.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
