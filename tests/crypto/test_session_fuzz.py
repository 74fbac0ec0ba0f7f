"""fuzz/sessions.py in CI: a seeded run finds nothing, and its checks can fail."""

from __future__ import annotations

from fuzz.sessions import Entry, Fuzzer


def _deliver_all(fuzzer: Fuzzer) -> None:
    """In mailbox order, as the server delivers them."""
    for to, box in enumerate(fuzzer.mailboxes):
        while box:
            fuzzer._receive(to, box.popleft())


def _group_entries(fuzzer: Fuzzer, sender: int) -> list[Entry]:
    return [e for e in fuzzer.archive if e.session_id is not None and e.sender == sender]


def test_a_seeded_run_of_every_action_finds_no_failure() -> None:
    report = Fuzzer(seed=7).run(4000)
    assert report.failures == []
    assert {name for name, _ in Fuzzer.ACTIONS} <= set(report.actions)
    # Messages were shown, replays refused or deduped, removed members kept out.
    for outcome in ("shown", "already shown", "room key", "receiver removed"):
        assert report.outcomes[outcome] > 0, outcome
    assert any(o.startswith("does not decrypt") for o in report.outcomes)


def test_a_client_without_dedupe_is_caught_showing_a_replay() -> None:
    fuzzer = Fuzzer(seed=1, devices=2)
    fuzzer.send_group(0)
    _deliver_all(fuzzer)
    assert fuzzer.report.outcomes["shown"] == 1
    fuzzer._receive(1, _group_entries(fuzzer, 0)[-1])
    assert fuzzer.report.failures == []  # deduped: Megolm itself decrypts it again
    fuzzer.devices[1].seen.clear()  # a client that forgot what it showed
    fuzzer._receive(1, _group_entries(fuzzer, 0)[-1])
    assert any("twice" in failure for failure in fuzzer.report.failures)


def _removed_after_one_message(forget_to_rotate: bool) -> Fuzzer:
    fuzzer = Fuzzer(seed=3, devices=3)
    fuzzer.send_group(0)
    _deliver_all(fuzzer)  # device 2 holds the key of device 0's session
    fuzzer.members.discard(2)
    if forget_to_rotate:
        sender = fuzzer.devices[0].outbound
        assert sender is not None
        sender[1].shared = []  # a sender that forgets who holds the key
    fuzzer.send_group(0)
    # The removed member gets the new message anyway (a stolen ciphertext).
    fuzzer._receive(2, _group_entries(fuzzer, 0)[-1], late=True)
    return fuzzer


def test_a_removed_member_reads_nothing_sent_after() -> None:
    assert _removed_after_one_message(forget_to_rotate=False).report.failures == []


def test_a_sender_that_forgets_to_rotate_is_caught() -> None:
    failures = _removed_after_one_message(forget_to_rotate=True).report.failures
    assert any("outside its membership" in failure for failure in failures)
