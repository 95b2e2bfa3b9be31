"""HTTP layer of the server (FastAPI): routes, schemas, errors, metrics and timing headers."""

from shoal.serve.api.app import ApiLimits, ServiceInfo, create_app

__all__ = ["ApiLimits", "ServiceInfo", "create_app"]
