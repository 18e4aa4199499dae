"""A structure-aware 9P fuzzer.

gen.py builds valid sessions with the project's message classes (all three
dialects), keeps a small model of the fids and names the server has
confirmed, and mutates some of the messages (boundary values, wrong fids and
tags, bad names, swapped types, lying sizes, truncated frames); it is
sans-IO. harness.py runs the sessions against a live `p9share serve`
subprocess, watches its log for internal errors, times every request and
keeps a canary connection that must always be served. Run it with
`python -m p9share.fuzz --help`.
"""
