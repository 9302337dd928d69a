"""Composition root: app factory, configuration, HTTP and WebSocket routes, bus, workers, CLI."""
