"""Command-line tools that talk to a running daemon (send, status, optout) and the demo."""
