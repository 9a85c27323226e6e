"""The Information Store: durable, de-duplicated Maildir delivery and size limits."""

from __future__ import annotations

import os
import poplib
from collections.abc import Callable
from pathlib import Path

import pytest

from mailwright.runtime.auth.accounts import Account, Accounts
from mailwright.runtime.store.mailstore import (
    DeliveryError,
    Mailbox,
    MailStore,
    message_uid,
    to_lf,
)
from mailwright.runtime.store.pop3 import Pop3Server

MESSAGE = (
    b"From: jane@dcnw.com\r\n"
    b"To: mark@minasi.com\r\n"
    b"Subject: Lunch\r\n"
    b"\r\n"
    b"Athena hands this to Hermes.\r\n"
)


def files(mailbox: Mailbox, sub: str) -> list[str]:
    return sorted(os.listdir(mailbox.maildir / sub))


def test_delivery_lands_in_new_as_a_maildir_file(tmp_path: Path) -> None:
    store = MailStore(tmp_path)
    assert store.deliver("mark", "<1@dcnw.com>", MESSAGE) is True
    mailbox = store.mailbox("mark")
    assert mailbox.maildir == tmp_path / "mark" / "Maildir"
    assert files(mailbox, "tmp") == []
    assert files(mailbox, "cur") == []
    (name,) = files(mailbox, "new")
    # Maildir name with Dovecot's size fields: S= on disk (LF), W= on the wire (CRLF).
    lf = to_lf(MESSAGE)
    assert f".{message_uid('<1@dcnw.com>')}.mailwright,S={len(lf)},W={len(MESSAGE)}" in name
    assert (mailbox.maildir / "new" / name).read_bytes() == lf
    assert (tmp_path / "mark" / "delivered").read_text() == message_uid("<1@dcnw.com>") + "\n"


def test_messages_are_stored_with_lf_and_sized_with_crlf(tmp_path: Path) -> None:
    store = MailStore(tmp_path)
    store.deliver("mark", "<crlf>", MESSAGE)
    store.deliver("mark", "<lf>", to_lf(MESSAGE))
    first, second = store.mailbox("mark").messages()
    assert first.path.read_bytes() == second.path.read_bytes() == to_lf(MESSAGE)
    assert b"\r" not in first.path.read_bytes()
    assert first.size == second.size == len(MESSAGE)
    assert [first.uid, second.uid] == [message_uid("<crlf>"), message_uid("<lf>")]


def test_a_second_copy_of_the_same_id_is_refused(tmp_path: Path) -> None:
    store = MailStore(tmp_path)
    assert store.deliver("mark", "<1@dcnw.com>", MESSAGE) is True
    assert store.deliver("mark", "<1@dcnw.com>", MESSAGE + b"changed\r\n") is False
    assert len(store.mailbox("mark").messages()) == 1
    # The same id for another mailbox is another delivery.
    assert store.deliver("paula", "<1@dcnw.com>", MESSAGE) is True


def test_deduplication_survives_a_restart(tmp_path: Path) -> None:
    MailStore(tmp_path).deliver("mark", "<1@dcnw.com>", MESSAGE)
    restarted = MailStore(tmp_path)
    assert restarted.deliver("mark", "<1@dcnw.com>", MESSAGE) is False
    assert restarted.deliver("mark", "<2@dcnw.com>", MESSAGE) is True
    assert len(restarted.mailbox("mark").messages()) == 2


def test_crash_between_rename_and_log_still_deduplicates(tmp_path: Path) -> None:
    store = MailStore(tmp_path)
    store.deliver("mark", "<1@dcnw.com>", MESSAGE)
    # The crash: the message made it into new/, its id never reached the log.
    (tmp_path / "mark" / "delivered").write_text("")
    restarted = MailStore(tmp_path)
    assert restarted.deliver("mark", "<1@dcnw.com>", MESSAGE) is False
    assert len(restarted.mailbox("mark").messages()) == 1
    # Reconciling wrote the id back, so it stays remembered after the message is gone.
    assert message_uid("<1@dcnw.com>") in (tmp_path / "mark" / "delivered").read_text()


def test_crash_before_the_log_existed_still_deduplicates(tmp_path: Path) -> None:
    Mailbox(tmp_path / "mark").deliver("<1@dcnw.com>", MESSAGE)
    (tmp_path / "mark" / "delivered").unlink()
    assert Mailbox(tmp_path / "mark").deliver("<1@dcnw.com>", MESSAGE) is False


def test_deleted_messages_stay_delivered(tmp_path: Path) -> None:
    mailbox = MailStore(tmp_path).mailbox("mark")
    mailbox.deliver("<1@dcnw.com>", MESSAGE)
    mailbox.delete(mailbox.messages())
    assert mailbox.messages() == []
    assert mailbox.deliver("<1@dcnw.com>", MESSAGE) is False
    assert Mailbox(tmp_path / "mark").deliver("<1@dcnw.com>", MESSAGE) is False


def test_size_limit_refuses_with_a_clear_reason(tmp_path: Path) -> None:
    store = MailStore(tmp_path, {"mark": 2 * len(MESSAGE)})
    store.deliver("mark", "<1>", MESSAGE)
    store.deliver("mark", "<2>", MESSAGE[: len(MESSAGE) // 2])
    with pytest.raises(DeliveryError, match=r"mailbox mark is full \(\d+ of \d+ bytes\)"):
        store.deliver("mark", "<3>", MESSAGE)
    assert len(store.mailbox("mark").messages()) == 2
    # A refusal is not a delivery: once there is room, the same id is taken.
    mailbox = store.mailbox("mark")
    mailbox.delete(mailbox.messages()[:1])
    assert store.deliver("mark", "<3>", MESSAGE) is True
    # Mailboxes without a limit take anything.
    assert store.deliver("paula", "<big>", MESSAGE * 1000) is True


def test_a_message_over_the_limit_on_its_own_is_refused(tmp_path: Path) -> None:
    store = MailStore(tmp_path, {"mark": 10})
    with pytest.raises(DeliveryError, match="full"):
        store.deliver("mark", "<1>", MESSAGE)
    assert store.mailbox("mark").messages() == []


def test_messages_come_in_delivery_order_from_new_and_cur(tmp_path: Path) -> None:
    mailbox = MailStore(tmp_path).mailbox("mark")
    for n in range(5):
        mailbox.deliver(f"<{n}>", MESSAGE)
    # A Maildir reader (mutt, Dovecot) moved one into cur/ and flagged it as seen.
    first = mailbox.messages()[0]
    os.rename(first.path, mailbox.maildir / "cur" / (first.path.name + ":2,S"))
    assert [m.uid for m in mailbox.messages()] == [message_uid(f"<{n}>") for n in range(5)]
    # Files that are not ours are left alone.
    (mailbox.maildir / "new" / "stray-file").write_bytes(b"x")
    assert len(mailbox.messages()) == 5


def test_deduplication_survives_deletion_over_pop3(
    tmp_path: Path,
    fast_accounts: dict[str, Account],
    serve: Callable[[Pop3Server], int],
    connect: Callable[[int], poplib.POP3],
) -> None:
    store = MailStore(tmp_path)
    store.deliver("mark", "<1@dcnw.com>", MESSAGE)
    port = serve(Pop3Server(Accounts(fast_accounts), store))
    client = connect(port)
    client.user("mark")
    client.pass_("demo-mark")
    client.dele(1)
    client.quit()
    assert store.mailbox("mark").messages() == []
    # The MTA redelivers after a crash: the mailbox does not take the copy.
    assert store.deliver("mark", "<1@dcnw.com>", MESSAGE) is False
    assert MailStore(tmp_path).deliver("mark", "<1@dcnw.com>", MESSAGE) is False
    assert store.mailbox("mark").messages() == []
