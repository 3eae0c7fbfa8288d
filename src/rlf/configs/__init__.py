"""Training presets (YAML), shipped with the package."""
