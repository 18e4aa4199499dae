"""The error every policy refusal raises."""

from __future__ import annotations


class PolicyError(OSError):
    """A request the policy refuses; errno goes to the client, the reason to the log
    and the audit trail, the rule names what refused it."""

    def __init__(self, err: int, reason: str, rule: str = "") -> None:
        super().__init__(err, reason)
        self.reason = reason
        self.rule = rule
