"""The API's webhook endpoints: register a URL of the operator's backend for events, list, remove.

A secret key only (a publishable key is refused by ``ApiKeyScope``). The signing secret is in the answer
to the ``POST`` that makes the endpoint, and never again.
"""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing_app.api_schema import errors
from billing_app.models import WebhookEndpoint
from billing_app.webhooks_out import MAX_URL_LENGTH, webhook_endpoint_create, webhook_endpoint_delete
from customers.events import CustomerEventType
from usage.api.fields import StringField, Timestamp


class WebhookEndpointOutput(serializers.Serializer):
    object = serializers.CharField(default="webhook_endpoint")
    id = serializers.IntegerField()
    url = serializers.CharField()
    events = serializers.ListField(child=serializers.ChoiceField(choices=CustomerEventType.choices))
    description = serializers.CharField()
    enabled = serializers.BooleanField(help_text="False once it was turned off after a day of failures.")
    disabled_reason = serializers.CharField()
    created = Timestamp(source="created_at")


class WebhookEndpointCreatedOutput(WebhookEndpointOutput):
    secret = serializers.CharField(
        help_text="Signs every delivery (`Billing-Signature`); shown in this answer only."
    )


class WebhookEndpointListOutput(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = WebhookEndpointOutput(many=True)  # type: ignore[assignment]


class WebhookEndpointDeletedOutput(serializers.Serializer):
    object = serializers.CharField(default="webhook_endpoint")
    id = serializers.IntegerField()
    deleted = serializers.BooleanField(default=True)


class WebhookEndpointsView(APIView):
    class WebhookEndpointInput(serializers.Serializer):
        url = StringField(max_length=MAX_URL_LENGTH, help_text="http:// or https://")
        # Plain strings: an unknown type is answered `unknown_event_type` with the valid ones, by the service.
        events = serializers.ListField(child=StringField(max_length=64), max_length=50)
        description = StringField(max_length=200, required=False, allow_blank=True, default="")

    @extend_schema(
        request=WebhookEndpointInput,
        responses={201: WebhookEndpointCreatedOutput},
        description="Register a URL that receives signed POSTs of the given event types (docs/webhooks.md). "
        "An unknown event type is `400 unknown_event_type`, with `valid_events`.",
    )
    def post(self, request: Request) -> Response:
        data = self.WebhookEndpointInput(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint = webhook_endpoint_create(**data.validated_data)
        return Response(WebhookEndpointCreatedOutput(endpoint).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: WebhookEndpointListOutput}, description="Every endpoint, without secrets.")
    def get(self, request: Request) -> Response:
        endpoints = WebhookEndpoint.objects.order_by("id")
        return Response(WebhookEndpointListOutput({"data": endpoints}).data)


class WebhookEndpointView(APIView):
    @extend_schema(
        responses={200: WebhookEndpointDeletedOutput, **errors(404)},
        description="Remove the endpoint; nothing more is sent to it, pending deliveries included.",
    )
    def delete(self, request: Request, endpoint_id: int) -> Response:
        webhook_endpoint_delete(endpoint_id=endpoint_id)
        return Response(WebhookEndpointDeletedOutput({"id": endpoint_id}).data)
