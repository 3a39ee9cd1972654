"""The typed, versioned results store."""
