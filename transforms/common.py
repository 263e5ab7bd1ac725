"""What the transforms share: the metrics namespace and the error rows.

Every file that cannot be used becomes an error row on the errors output
(tag ``transforms.schema.ERRORS_TAG``, schema ``transforms.schema.ERRORS``),
never an exception that stops the run.
"""

from __future__ import annotations

METRICS_NAMESPACE = "imgclass"


def error_row(path: str, stage: str, error: BaseException,
              run_id: str) -> dict:
    """One row of the errors table (see ``transforms.schema.ERRORS``)."""
    return described_error_row(path, stage, type(error).__name__, str(error),
                               run_id)


def described_error_row(path: str, stage: str, error_type: str,
                        message: str, run_id: str) -> dict:
    """An error row from an error's type name and message."""
    message = " ".join(message.split()) or error_type
    return {"path": path, "stage": stage, "error_type": error_type,
            "message": message[:1000], "run_id": run_id}


def check_model_ref(model_ref) -> str:
    """``model_ref`` if it is a non-empty string, else ConfigError."""
    from model_store.errors import ConfigError

    if not isinstance(model_ref, str) or not model_ref:
        raise ConfigError(f"model_ref must be NAME, NAME@VERSION or a version "
                          f"folder, e.g. 'digits-cnn@1', got {model_ref!r}")
    return model_ref


def check_optional_text(name: str, value):
    """``value`` if it is None or a string, else ConfigError."""
    from model_store.errors import check_text

    return None if value is None else check_text(
        name, value, what="a string or None")
