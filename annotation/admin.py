"""The Django admin of the annotation app, for staff.

Fields that the services own are read-only here, because a direct edit would skip their rules: a task's
state and counters are only changed by ``annotation.services.queue`` holding the task's lock (an edited
``state`` would hand a full task out again, or hide an open one), its candidates never change once it is
open, and rankings, their pairs, candidates and leases are records of what annotators did. Changes go
through admin actions that call the services (``close_task``); a project's base model passes
``check_model_path`` for the staff user who sets it.
"""

from django import forms
from django.contrib import admin, messages

from annotation import models
from annotation.exceptions import AnnotationError
from annotation.services.projects import check_model_path
from annotation.services.queue import close_task


class ReadOnlyAdmin(admin.ModelAdmin):
    """A record to look at, never to add, edit or delete by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


RECORDS = {m._meta.verbose_name for m in (models.Assignment, models.Ranking, models.PreferencePair, models.Candidate)}


class DeletesItsRecords:
    """Deleting this row takes its read-only records with it (a task its leases, rankings and pairs, so
    no counter is left behind; a prompt its candidates and tasks): the records are never deleted alone,
    but they do not stand in the way."""

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, perms_needed - RECORDS, protected


class MembershipInline(admin.TabularInline):
    model = models.Membership
    extra = 1
    autocomplete_fields = ["user"]


class ProjectAdminForm(forms.ModelForm):
    user = None  # set per request by ProjectAdmin.get_form

    def clean_base_model(self):
        value = self.cleaned_data["base_model"]
        if self.instance.pk and value == self.instance.base_model:
            return value  # unchanged: a path a superuser set stays when staff edit other fields
        return check_model_path(value, user=self.user)


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):
    form = ProjectAdminForm
    list_display = ["name", "slug", "task_type", "candidates_per_task", "overlap", "lease_minutes", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"user": request.user})

    def get_deleted_objects(self, objs, request):
        """Deleting a project takes all of it, the read-only records too (they are never deleted alone)."""
        deleted, counts, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, counts, set(), protected


@admin.register(models.Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["project", "user", "role", "created_at"]
    list_filter = ["role", "project"]
    autocomplete_fields = ["user", "project"]


@admin.register(models.Image)
class ImageAdmin(admin.ModelAdmin):
    """Images are content-addressed and stored by imports; only their ground truth may be corrected."""

    list_display = ["sha256", "format", "width", "height", "size_bytes", "created_at"]
    search_fields = ["sha256"]
    readonly_fields = ["sha256", "file", "format", "width", "height", "size_bytes", "created_at"]

    def has_add_permission(self, request):
        return False


@admin.register(models.Prompt)
class PromptAdmin(DeletesItsRecords, admin.ModelAdmin):
    """Prompts come from imports. Their text, image and split are what rankings and the held-out set
    were made on (moving a prompt between train and eval would leak held-out data into training)."""

    list_display = ["id", "project", "split", "text", "external_id"]
    list_filter = ["project", "split"]
    search_fields = ["text", "external_id"]
    readonly_fields = ["project", "image", "text", "split", "created_at"]

    def has_add_permission(self, request):
        return False


@admin.register(models.Candidate)
class CandidateAdmin(ReadOnlyAdmin):
    """Rankings and preference pairs point at candidates: an edited text would change what they say."""

    list_display = ["id", "prompt", "source", "text"]
    list_filter = ["source"]
    search_fields = ["text"]


@admin.action(description="Close the selected tasks (leases end, rankings stay)", permissions=["change"])
def close_tasks(modeladmin, request, queryset):
    closed = 0
    for task_id in queryset.exclude(state=models.RankingTask.State.CLOSED).values_list("pk", flat=True):
        try:
            close_task(task_id=task_id)
        except AnnotationError as exc:
            modeladmin.message_user(request, f"task {task_id}: {exc.message}", messages.ERROR)
        else:
            closed += 1
    modeladmin.message_user(request, f"{closed} task(s) closed.", messages.SUCCESS)


@admin.register(models.RankingTask)
class RankingTaskAdmin(DeletesItsRecords, admin.ModelAdmin):
    """Only the priority is edited by hand; closing a task is an action (``close_task``)."""

    list_display = ["id", "project", "state", "priority", "completed_count", "leased_count", "required_annotations"]
    list_filter = ["project", "state"]
    readonly_fields = [
        "project", "prompt", "candidate_ids", "required_annotations", "leased_count", "completed_count", "state",
        "origin", "created_at",
    ]
    actions = [close_tasks]

    def has_add_permission(self, request):
        return False  # tasks are opened by imports and generation (open_task checks the candidates)



@admin.register(models.Assignment)
class AssignmentAdmin(ReadOnlyAdmin):
    list_display = ["id", "task", "annotator", "state", "leased_at", "expires_at"]
    list_filter = ["state", "project"]


@admin.register(models.Ranking)
class RankingAdmin(ReadOnlyAdmin):
    list_display = ["id", "project", "task", "annotator", *models.Ranking.flag_columns(()), "created_at"]
    list_filter = ["project", *models.Ranking.flag_columns(())]


@admin.register(models.PreferencePair)
class PreferencePairAdmin(ReadOnlyAdmin):
    list_display = ["id", "project", "chosen", "rejected", "margin", "created_at"]
    list_filter = ["project"]
