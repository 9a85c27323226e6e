"""The seed's journey, for `make demo`: Jane on Athena writes to mark@minasi.com; the message
goes Athena -> Hermes (IMS) -> DNS MX lookup -> SMTP to Arlington's IMS -> Mark's mailbox, and
Mark reads it over POP3. Run after `mailwright apply examples/seed/*.yaml`.

    python examples/seed/journey.py [--state .mailwright]
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import poplib
import subprocess
import sys
import time
from pathlib import Path

MAILWRIGHT = str(Path(sys.executable).with_name("mailwright"))


def mailwright(*args: str, password: str = "") -> str:
    env = {**os.environ, "DEMO_PASSWORD": password}
    done = subprocess.run([MAILWRIGHT, *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout


def wait_for_delivery(state: str, message_id: str, timeout: float = 30.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [
            json.loads(line)
            for line in mailwright("track", message_id, "--state", state, "--json").splitlines()
        ]
        if any(e["event"] == "delivered" and e["host"] == "arlington" for e in events):
            return events
        time.sleep(0.5)
    raise SystemExit(f"not delivered within {timeout:.0f}s; see `mailwright track {message_id}`")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", default=".mailwright")
    state = parser.parse_args().state
    attachment = Path(state) / "demo-attachment.txt"
    attachment.write_text("Exchange 5.5 site addressing, GWART and IMS notes.\n")
    print("1. Jane (DCNW, mailbox on Athena) submits a message to mark@minasi.com")
    message_id = mailwright(
        "send",
        "--from",
        "jane@dcnw.com",
        "--to",
        "mark@minasi.com",
        "--subject",
        "Exchange and POP3",
        "--body",
        "Hello Mark, the IMS on Hermes says hi.",
        "--attach",
        str(attachment),
        "--password-env",
        "DEMO_PASSWORD",
        "--state",
        state,
        password="demo-jane",
    ).strip()
    print(f"   message id {message_id}")
    print("2-6. The message travels (mailwright track):")
    for event in wait_for_delivery(state, message_id):
        details = ", ".join(
            f"{k}={v}"
            for k, v in sorted(event.items())
            if k not in ("time", "host", "event", "message_id")
        )
        print(f"   {event['host']:<10} {event['event']:<11} {details}")
    status = json.loads(mailwright("status", "--state", state, "--json"))
    host, port = status["hosts"]["Minasi/arlington"]["services"]["pop3"].rsplit(":", 1)
    print(f"7. Mark reads his mail over POP3 at {host}:{port}")
    client = poplib.POP3(host, int(port))
    print(f"   {client.getwelcome().decode()}")
    client.user("mark")
    client.pass_("demo-mark")
    count, _ = client.stat()
    lines = client.retr(count)[1]
    client.quit()
    message = email.message_from_bytes(b"\r\n".join(lines), policy=email.policy.default)
    for received in message.get_all("Received", []):
        print(f"   Received: {' '.join(str(received).split())}")
    print(f"   Subject: {message['Subject']}; From: {message['From']}")
    print(f"   attachments: {[part.get_filename() for part in message.iter_attachments()]}")
    print("\nThe organizations keep running: see `mailwright status`, stop with `mailwright down`.")


if __name__ == "__main__":
    main()
