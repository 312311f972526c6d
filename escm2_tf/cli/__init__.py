"""Command-line entry points. Only modules in this package define absl flags."""
