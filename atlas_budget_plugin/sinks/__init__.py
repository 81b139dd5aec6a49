"""Built-in alert sinks; each is an ``atlas_budget`` entry point like any third-party sink."""
