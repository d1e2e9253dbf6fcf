"""What every call passes through: auth, request parsing, the status of errors, the log."""
