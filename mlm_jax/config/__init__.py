"""Configuration: every field with its default and comment, the field checks every spec uses,
config files loaded by path, and the error a bad config raises. Nothing here builds anything."""
