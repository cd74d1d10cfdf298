"""The HTTP layer: routes, request/response schemas, dependencies, upload limit, tracklet fields, docs pages."""
