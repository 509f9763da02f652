"""schemathesis against /api/schema/: generated requests, valid and not, never get a 5xx.

Runs in-process through Django's WSGI handler, logged in with a token; launches go to a
host on libvirt's test driver whose queue no worker reads, so nothing boots.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture
def token(employee, fake_template) -> str:
    from rest_framework.authtoken.models import Token

    return Token.objects.create(user=employee).key


@pytest.mark.fuzz
@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.django_db(transaction=True)  # the WSGI handler closes connections per request
def test_no_server_errors(case, token) -> None:
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=[not_a_server_error])
