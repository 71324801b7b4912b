"""Token authentication with the token and its user read in one hand-written query.

The same rules as DRF's ``TokenAuthentication`` (unknown key or inactive user: 401); it skips the ORM's
query building, which every API request would otherwise pay for.
"""

from functools import cache

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from annotation import rawsql


@cache
def _sql(user_model, vendor: str) -> str:
    return (
        f"SELECT {rawsql.columns(user_model, 'u')} FROM {user_model._meta.db_table} u "
        f"JOIN {Token._meta.db_table} t ON t.user_id = u.{user_model._meta.pk.column} WHERE t.key = %s"
    )


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key):
        user_model = get_user_model()
        user = rawsql.fetch_one(user_model, _sql(user_model, connection.vendor), [key])
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return user, Token(key=key, user=user)
