"""Errors shaped like those of the object-store clients, without their
libraries (Beam's gcp, aws and azure extras are not test dependencies):
each class has the module and name of the real one, and the real one's
bases, as far as ``model_store.fs.is_store_error`` looks (by module and
name along the MRO). Beam's own S3ClientError is the real class.
"""

from apache_beam.io.aws.clients.s3.messages import S3ClientError


# google-api-core (google.api_core.exceptions): GoogleAPICallError's str is
# "<code> <message>".
class GoogleAPIError(Exception):
    __module__ = "google.api_core.exceptions"


class GoogleAPICallError(GoogleAPIError):
    __module__ = "google.api_core.exceptions"
    code = None

    def __init__(self, message, errors=(), response=None):
        super().__init__(message)
        self.message, self.errors, self.response = message, errors, response

    def __str__(self):
        return f"{self.code} {self.message}"


class ServerError(GoogleAPICallError):
    __module__ = "google.api_core.exceptions"


class ServiceUnavailable(ServerError):
    __module__ = "google.api_core.exceptions"
    code = 503


class ClientError(GoogleAPICallError):
    __module__ = "google.api_core.exceptions"


class NotFound(ClientError):
    __module__ = "google.api_core.exceptions"
    code = 404


class Forbidden(ClientError):
    __module__ = "google.api_core.exceptions"
    code = 403


class TooManyRequests(ClientError):
    __module__ = "google.api_core.exceptions"
    code = 429


class RetryError(GoogleAPIError):
    __module__ = "google.api_core.exceptions"

    def __init__(self, message, cause):
        super().__init__(message)
        self.message, self.cause = message, cause

    def __str__(self):
        return f"{self.message}, last exception: {self.cause}"


# google-auth (google.auth.exceptions)
class GoogleAuthError(Exception):
    __module__ = "google.auth.exceptions"


class RefreshError(GoogleAuthError):
    __module__ = "google.auth.exceptions"


# botocore (botocore.exceptions)
class BotoCoreError(Exception):
    __module__ = "botocore.exceptions"


class EndpointConnectionError(BotoCoreError):
    __module__ = "botocore.exceptions"


class BotoClientError(Exception):
    """botocore.exceptions.ClientError (named so here: google's ClientError
    is above)."""
    __module__ = "botocore.exceptions"
    __qualname__ = "ClientError"

    def __init__(self, error_response, operation_name):
        error = error_response.get("Error", {})
        super().__init__(f"An error occurred ({error.get('Code')}) when "
                         f"calling the {operation_name} operation: "
                         f"{error.get('Message')}")
        self.response, self.operation_name = error_response, operation_name


# azure-core (azure.core.exceptions): a message of several lines.
class AzureError(Exception):
    __module__ = "azure.core.exceptions"

    def __init__(self, message, *args, **kwargs):
        super().__init__(message, *args)
        self.message = message

    def __str__(self):
        return self.message


class HttpResponseError(AzureError):
    __module__ = "azure.core.exceptions"

    def __init__(self, message, status_code=None, reason=None):
        super().__init__(message)
        self.status_code, self.reason = status_code, reason


def gcs_unavailable(method: str, path: str) -> ServiceUnavailable:
    """GCS's 503 for ``method`` on the object ``path`` (``scheme://b/k``),
    as google-cloud-storage raises it after its retries."""
    bucket, _, key = path.split("://", 1)[1].partition("/")
    return ServiceUnavailable(
        f"{method} https://storage.googleapis.com/storage/v1/b/{bucket}/o/"
        f"{key.replace('/', '%2F')}?prettyPrint=false: We encountered an "
        f"internal error. Please try again.")


def s3_slow_down(operation: str) -> S3ClientError:
    """S3's 503 SlowDown for ``operation`` (e.g. GetObject), as Beam's boto3
    client wraps it."""
    return S3ClientError(
        f"An error occurred (SlowDown) when calling the {operation} "
        f"operation (reached max retries: 4): Please reduce your request "
        f"rate.", 503)


def azure_server_busy() -> HttpResponseError:
    """Azure Blob Storage's 503 ServerBusy, as azure-core words it."""
    return HttpResponseError(
        "(ServerBusy) The server is busy.\nRequestId:0f3c7a1e\n"
        "Time:2026-11-29T13:35:07.0000000Z\nErrorCode:ServerBusy",
        status_code=503, reason="Service Unavailable")
