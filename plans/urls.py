from django.urls import path

from plans import views

urlpatterns = [
    path("pricing", views.pricing, name="pricing"),
    path("pricing/changelog", views.changelog, name="pricing-changelog"),
]
