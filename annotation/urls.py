from django.urls import path

from annotation import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("projects/new/", views.project_new, name="project-new"),
    path("projects/<slug:slug>/work/", views.work, name="work"),
    path("projects/<slug:slug>/dashboard/", views.dashboard, name="project-dashboard"),
    path("projects/<slug:slug>/settings/", views.project_settings, name="project-settings"),
    path("projects/<slug:slug>/import/", views.project_import, name="project-import"),
    path("projects/<slug:slug>/imports/<int:import_id>/", views.project_import, name="project-import-detail"),
    path("projects/<slug:slug>/members/", views.members, name="project-members"),
    path("projects/<slug:slug>/review/", views.review, name="project-review"),
    path("projects/<slug:slug>/annotators/<int:user_id>/readmit/", views.readmit, name="annotator-readmit"),
    path("projects/<slug:slug>/export/", views.export, name="project-export"),
]
