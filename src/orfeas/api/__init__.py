"""The HTTP API: an app factory, routes per resource, errors mapped to JSON in one place."""
