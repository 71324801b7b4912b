"""Token auth and the project-role check give the same answers on both of their paths: the prepared
statement (PostgreSQL, ``annotation.rawsql``) and the ORM (every other database, and PostgreSQL for a
user model ``rawsql`` does not build)."""

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from annotation import rawsql
from annotation.api.auth import TokenAuthentication
from annotation.permissions import project_and_role, task_project_and_role
from tests import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["orm", pytest.param("prepared", marks=pytest.mark.postgres)])
def path(request, monkeypatch):
    if request.param == "prepared":
        if connection.vendor != "postgresql":
            pytest.skip("the prepared path needs DATABASE_URL pointing at PostgreSQL")
        assert rawsql.plain(Token._meta.get_field("user").related_model)
    else:
        monkeypatch.setattr(rawsql, "plain", lambda model: False)
    return request.param


def test_a_token_gives_its_user_and_an_unknown_or_inactive_ones_a_401(path):
    alice = f.user("alice")
    key = Token.objects.create(user=alice).key
    user, token = TokenAuthentication().authenticate_credentials(key)
    assert (user.pk, user.username, user.is_active, token.key) == (alice.pk, "alice", True, key)
    assert user.date_joined == alice.date_joined and user.last_login == alice.last_login
    with pytest.raises(AuthenticationFailed, match="Invalid token"):
        TokenAuthentication().authenticate_credentials("0" * 40)
    alice.is_active = False
    alice.save()
    with pytest.raises(AuthenticationFailed, match="inactive"):
        TokenAuthentication().authenticate_credentials(key)


def test_the_role_check_by_slug_and_by_task(path):
    alice, bob, eve, root = f.user("alice"), f.user("bob"), f.user("eve"), f.user("root", is_superuser=True)
    proj = f.project("vision", admins=[alice], annotators=[bob])
    task = f.task(proj)
    project, role = project_and_role(alice, "vision", admin=True)
    assert (project.pk, project.slug, project.overlap, project.created_at, role) == (
        proj.pk, "vision", proj.overlap, proj.created_at, "admin")
    assert project_and_role(bob, "vision")[1] == "annotator"
    assert task_project_and_role(bob, task.pk)[0].pk == proj.pk
    assert project_and_role(root, "vision", admin=True)[1] == "admin"
    with pytest.raises(PermissionDenied, match="only project admins"):
        project_and_role(bob, "vision", admin=True)
    with pytest.raises(PermissionDenied, match="not a member"):
        task_project_and_role(eve, task.pk)
    with pytest.raises(Http404):
        project_and_role(alice, "nope")
    with pytest.raises(Http404):
        task_project_and_role(alice, task.pk + 1000)
