"""CogVideoX models: the diffusers folder layout, where it comes from (local or S3), loading it."""
