"""The process: CLI, configuration, logging, scheduling, signals, systemd notify, metrics."""
