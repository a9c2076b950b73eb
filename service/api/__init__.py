"""The HTTP API the mini-program talks to."""
