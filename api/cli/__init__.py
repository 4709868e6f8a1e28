"""The `cloudjobs` command: server commands, `dev`, the embedded database, `doctor`."""
