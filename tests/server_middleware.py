"""Middleware for the suite's own servers (portal/test_settings.py adds it).

Between transactional tests the test database is flushed, and Django re-creates the
content types with new ids; a long-lived server process (the suite's daphne) still caches
the old ids, and the admin's history row for the next save then points at a content type
that no longer exists (a 500 that only a run of several admin tests showed). Forgetting the
cache at each request keeps the server in step with the database it shares with the tests.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.contenttypes.models import ContentType
from django.http import HttpRequest, HttpResponse


class ContentTypeCacheReset:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        ContentType.objects.clear_cache()
        return self.get_response(request)
