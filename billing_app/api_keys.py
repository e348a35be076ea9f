"""API keys made over the API: a customer's publishable key, for the customer's own frontend."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from billing_app.api_schema import errors
from billing_app.models import ApiKey
from customers.selectors import customer_by_external_id
from usage.api.customer_views import CustomerEndpoint
from usage.api.fields import StringField


class PublishableKeyOutput(serializers.Serializer):
    object = serializers.CharField(default="publishable_key")
    id = serializers.IntegerField(source="api_key.pk")
    name = serializers.CharField(source="api_key.name")
    customer = serializers.CharField(source="api_key.customer.external_id")
    key = serializers.CharField(help_text="The key itself; shown once, only its hash is kept.")
    created_at = serializers.DateTimeField(source="api_key.created_at")


class PublishableKeysView(CustomerEndpoint):
    """Make a publishable key for one customer; it may only read that customer's usage and checks."""

    class PublishableKeyInput(serializers.Serializer):
        name = StringField(max_length=120, required=False)

    @extend_schema(request=PublishableKeyInput, responses={201: PublishableKeyOutput, **errors(404)})
    def post(self, request: Request, external_id: str) -> Response:
        data = self.PublishableKeyInput(data=request.data)
        data.is_valid(raise_exception=True)
        customer = customer_by_external_id(external_id)
        api_key, raw_key = ApiKey.generate_publishable(
            customer=customer, name=data.validated_data.get("name")
        )
        body = PublishableKeyOutput({"api_key": api_key, "key": raw_key}).data
        return Response(body, status=status.HTTP_201_CREATED)
