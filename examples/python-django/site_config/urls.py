from django.contrib import admin
from django.urls import path

from notes import views

urlpatterns = [
    path("", views.index, name="index"),
    path("notes/<int:pk>/", views.detail, name="detail"),
    path("api/notes", views.api_notes, name="api-notes"),
    path("visits", views.visits, name="visits"),
    path("admin/", admin.site.urls),
]
