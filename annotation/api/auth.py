"""Token authentication: DRF's rules (unknown key or inactive user: 401), the token and its user in
one query.

On PostgreSQL the query is a prepared statement (``annotation.rawsql``): every API request starts with
it, and DRF's ORM lookup cost about 0.6 ms more per request (docs/benchmarks.md). Elsewhere, or for a
user model with fields ``rawsql`` does not build, it is DRF's own ``select_related`` lookup.
"""

from functools import cache

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from annotation import rawsql


@cache
def _sql(user_model) -> str:
    return (
        f"SELECT {rawsql.columns(user_model, 'u')} FROM {user_model._meta.db_table} u "
        f"JOIN {Token._meta.db_table} t ON t.user_id = u.{user_model._meta.pk.column} WHERE t.key = %s"
    )


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key):
        user_model = get_user_model()
        if not rawsql.plain(user_model):
            return super().authenticate_credentials(key)
        user = rawsql.fetch_one(user_model, _sql(user_model), [key])
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return user, Token(key=key, user=user)
