"""Every section of docs/protocol.md that states a rule has at least one case."""

from __future__ import annotations

import re
from pathlib import Path

from p9share.conformance.registry import MUST, SHOULD, all_cases

SPEC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

# Sections without a rule of their own, and why.
NO_RULE = {
    "§1": "chapter heading",
    "§2": "chapter heading",
    "§3": "chapter heading",
    "§4": "chapter heading",
    "§5": "chapter heading",
    "§6": "chapter heading",
    "§7": "chapter heading",
    "§8": "chapter heading (its rules are in §8.1-§8.8)",
    "§9": "chapter heading",
    "§10": "chapter heading",
    "§11": "chapter heading",
    "§1.1": "scope",
    "§1.2": "requirement keywords",
    "§1.4": "notation",
    "§1.5": "terms",
    "§5.2": "refers to §3.1-§3.3",
    "§5.5": "refers to §3.6",
    "§5.6": "refers to §4.4",
    "§9.1": "states what the document is",
}
# Sections whose rules concern the command line, listeners, keys or a
# configured policy (clients, rights, limits, reload, quotas): not reachable by
# a 9P client of an arbitrary server, checked by other tests (named).
NOT_OVER_THE_WIRE = {
    "§7.2": "tests/security/test_policy_matrix.py",
    "§7.7": "tests/security/test_policy_matrix.py, tests/security/test_attacks.py",
    "§7.9": "tests/server/test_limits.py",
    "§7.10": "tests/test_cli_policy.py",
    "§7.11": "tests/security/test_quota.py",
    "§10.1": "tests/test_cli.py",
    "§10.2": "tests/test_cli.py",
    "§10.3": "tests/test_cli.py",
    "§10.4": "tests/test_cli.py",
    "§10.5": "tests/vm",
    "§11.2": "tests/security/test_auth.py",
    "§11.3": "tests/security/test_auth.py",
    "§11.4": "tests/security/test_auth.py",
    "§11.5": "tests/security/test_auth.py",
    "§11.6": "tests/security/test_auth.py",
    "§11.7": "tests/security/test_auth.py",
    "§11.8": "tests/security/test_auth.py",
}


def spec_sections() -> list[str]:
    return re.findall(r"^#{2,4} (§[\d.]+)", SPEC.read_text(encoding="utf-8"), re.M)


def test_every_rule_section_has_a_case() -> None:
    covered = {k.section for k in all_cases()}
    missing = [s for s in spec_sections()
               if s not in covered and s not in NO_RULE and s not in NOT_OVER_THE_WIRE]  # fmt: skip
    assert missing == []


def test_cases_cite_existing_sections_and_lists_are_current() -> None:
    sections = set(spec_sections())
    assert {k.section for k in all_cases()} <= sections
    assert set(NO_RULE) <= sections and set(NOT_OVER_THE_WIRE) <= sections
    covered = {k.section for k in all_cases()}
    assert not covered & set(NO_RULE)  # a section with a case states a rule after all


def test_registry_entries_are_well_formed() -> None:
    ids = [k.id for k in all_cases()]
    assert len(ids) == len(set(ids))
    for k in all_cases():
        assert k.level in (MUST, SHOULD) and k.title and k.dialects, k
