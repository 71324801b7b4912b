"""URLs of the training pages (the JSON API of the loop lives in ``rlhf.api``)."""

from django.urls import path

from rlhf import views

urlpatterns = [
    path("projects/<slug:slug>/training/", views.training, name="training"),
    path("projects/<slug:slug>/training/rounds/", views.launch_round, name="training-launch"),
    path("projects/<slug:slug>/training/settings/", views.loop_settings, name="training-settings"),
    path("projects/<slug:slug>/training/gate/", views.gate_settings, name="training-gate"),
    path("projects/<slug:slug>/training/reward/", views.reward_settings, name="training-reward"),
    path("projects/<slug:slug>/training/generate/", views.generate, name="training-generate"),
    path("projects/<slug:slug>/training/versions/", views.versions, name="training-versions"),
    path("projects/<slug:slug>/training/versions/<int:version_id>/activate/", views.version_activate,
         name="training-version-activate"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("runs/<int:run_id>/curves/", views.run_curves, name="run-curves"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<int:run_id>/resume/", views.run_resume, name="run-resume"),
]
