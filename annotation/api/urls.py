from django.urls import path

from annotation.api import gold, imports, views

urlpatterns = [
    path("projects/", views.ProjectListView.as_view(), name="api-projects"),
    path("projects/<slug:slug>/", views.ProjectDetailView.as_view(), name="api-project"),
    path("projects/<slug:slug>/stats/", views.ProjectStatsView.as_view(), name="api-project-stats"),
    path("projects/<slug:slug>/next/", views.NextTaskView.as_view(), name="api-next-task"),
    path("projects/<slug:slug>/upcoming/", views.UpcomingView.as_view(), name="api-upcoming"),
    path("projects/<slug:slug>/rankings/", views.RankingListView.as_view(), name="api-rankings"),
    path("projects/<slug:slug>/images/<int:image_id>/", views.ImageView.as_view(), name="api-image"),
    path("projects/<slug:slug>/imports/", imports.ImportView.as_view(), name="api-import"),
    path("projects/<slug:slug>/imports/<int:import_id>/", imports.ImportDetailView.as_view(), name="api-import-detail"),
    path("projects/<slug:slug>/imports/<int:import_id>/cancel/", imports.ImportCancelView.as_view(),
         name="api-import-cancel"),
    path("projects/<slug:slug>/export/", views.ExportView.as_view(), name="api-export"),
    path("projects/<slug:slug>/quality/", views.QualityView.as_view(), name="api-quality"),
    path("projects/<slug:slug>/members/", views.MemberListView.as_view(), name="api-members"),
    path("projects/<slug:slug>/members/<str:username>/", views.MemberDetailView.as_view(), name="api-member"),
    path("tasks/<int:task_id>/submit/", views.SubmitView.as_view(), name="api-submit"),
    path("tasks/<int:task_id>/skip/", views.SkipView.as_view(), name="api-skip"),
    path("rankings/<int:ranking_id>/review/", views.RankingReviewView.as_view(), name="api-ranking-review"),
    path("tasks/<int:task_id>/release/", views.ReleaseView.as_view(), name="api-release"),
    path("tasks/<int:task_id>/gold/", gold.TaskGoldView.as_view(), name="api-task-gold"),
    path("rankings/<int:ranking_id>/gold/", gold.RankingGoldView.as_view(), name="api-ranking-gold"),
    path("projects/<slug:slug>/gold/", gold.GoldReportView.as_view(), name="api-gold"),
    path("projects/<slug:slug>/annotators/<int:user_id>/readmit/", gold.ReadmitView.as_view(), name="api-readmit"),
]
