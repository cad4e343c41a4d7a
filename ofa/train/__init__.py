"""Train the supernet once: schedules (YAML), the trainer, checkpoints and run folders."""
