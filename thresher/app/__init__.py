"""Layer 6, the application: the command line (`cli`, `commands`), jobs, `--plan`, the demo and the
generated config reference. Nothing below imports it."""
