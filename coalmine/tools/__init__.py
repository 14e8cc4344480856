"""The command-line tools around the daemon.

Replay, record, report, the pipeline commands (start, finish, wait, send) and the demo
with its traffic simulator. They use the daemon's pieces (contract, router, transports);
nothing in the daemon uses them.
"""
