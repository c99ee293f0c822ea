"""Run configurations: `get_config()` in each file; variants import base and override."""
