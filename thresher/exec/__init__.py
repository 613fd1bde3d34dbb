"""Layer 1, execution: how every stage's work runs (`execute`: Ray or local, retries, deadlines, the
stall watchdog, failure records), progress lines, and the reaper of a local Ray instance. The only layer
that imports Ray. Imports only core."""
