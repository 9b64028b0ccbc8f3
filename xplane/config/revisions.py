"""A config revision as recorded: every config repo commit the sync looked at."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from xplane.config.errors import ConfigIssue


class RevisionStatus(StrEnum):
    APPLIED = "applied"
    REJECTED = "rejected"


class RevisionInfo(BaseModel):
    id: int
    sha: str
    source: str
    received_at: datetime
    status: RevisionStatus
    errors: list[ConfigIssue] = Field(default_factory=list)
    summary: str = ""
