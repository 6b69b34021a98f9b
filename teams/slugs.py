"""Team slugs and named pipelines (DESIGN §4)."""

from __future__ import annotations

from typing import Literal, get_args

TeamSlug = Literal[
    "product-management",
    "business-analysis",
    "solution-architecture",
    "api-design",
    "database-engineering",
    "ux-ui-design",
    "frontend-engineering",
    "backend-engineering",
    "feature-engineering",
    "data-engineering",
    "ml-engineering",
    "devops-infrastructure",
    "qa-engineering",
    "security-engineering",
    "compliance-legal",
    "sre-operations",
    "documentation",
]

#: Every team, in the order the ``full`` pipeline runs them.
ALL_TEAMS: tuple[TeamSlug, ...] = get_args(TeamSlug)

PIPELINES: dict[str, tuple[TeamSlug, ...]] = {
    "phase1": (
        "business-analysis",
        "solution-architecture",
        "backend-engineering",
        "qa-engineering",
        "documentation",
    ),
    "full": ALL_TEAMS,
}

#: The memory bank every team shares.
SHARED_BANK = "factory-shared-world"
