"""The help-desk search's GET parameters: the free-text query and the two narrowing filters.

The query is free text (cut to a sane length, NUL characters dropped: hostile queries get
an empty or short result, never an error). The filters are checkboxes, so they are either
absent (or empty) or "1"; anything else is refused with a message that says what is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import QueryDict

MAX_QUERY_LENGTH = 100
FILTERS = {
    "employees": "Employees only",
    "with_desktops": "With desktops only",
}
CHECKED = "1"


@dataclass(frozen=True)
class HelpdeskSearch:
    """What the help desk asked for, and what was wrong with it."""

    query: str = ""
    employees_only: bool = False
    with_desktops_only: bool = False
    errors: tuple[str, ...] = ()

    @property
    def wanted(self) -> bool:
        """Whether to search: a query, or a filter to list everyone it lets through."""
        asked = bool(self.query or self.employees_only or self.with_desktops_only)
        return asked and not self.errors


def helpdesk_search_from(params: QueryDict) -> HelpdeskSearch:
    """Read and check the search's GET parameters."""
    query = params.get("q", "").replace("\x00", "").strip()[:MAX_QUERY_LENGTH]
    errors: list[str] = []
    checked: dict[str, bool] = {}
    for name, label in FILTERS.items():
        values = [value for value in params.getlist(name) if value != ""]
        checked[name] = values == [CHECKED]
        if values and values != [CHECKED]:
            errors.append(
                f"The filter “{label}” ({name}) takes the value {CHECKED} (on) or nothing; "
                "the search was not run."
            )
    return HelpdeskSearch(
        query=query,
        employees_only=checked["employees"],
        with_desktops_only=checked["with_desktops"],
        errors=tuple(errors),
    )
