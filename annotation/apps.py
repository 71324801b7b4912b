from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _generic_plans(sender, connection, **kwargs):
    """PostgreSQL: reuse one plan per prepared statement (the queue's, see ``annotation.rawsql``, and the
    foreign-key checks). Left to choose, PostgreSQL re-planned the lease statement on every call, because
    its generic plan looks costlier on paper than the custom ones; planning then cost more than running.
    Django's own queries are not prepared, so this does not touch them."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_generic_plan")


class AnnotationConfig(AppConfig):
    name = "annotation"
    verbose_name = "Annotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        connection_created.connect(_generic_plans, dispatch_uid="lensloop-generic-plans")
