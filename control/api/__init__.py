"""The REST API (/api/v1): one route table per resource, each route declaring its permission."""
