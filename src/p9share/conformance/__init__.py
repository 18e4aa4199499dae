"""The conformance suite: raw-protocol cases checking a 9P server against
docs/protocol.md, each naming the section it checks."""
