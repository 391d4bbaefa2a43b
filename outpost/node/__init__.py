"""The node: sends under custody, receives and delivers exactly once, runs the daemon loop."""
