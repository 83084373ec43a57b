"""Configuration: schemas (ConfigStore), the conf/ location, validation and CLI preflight."""
