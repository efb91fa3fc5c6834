"""The proxy listener: route, (authenticate,) forward."""
