#!/bin/sh
# SMTP inbound throughput: mailwright's IMS against a private Postfix relaying to smtp-sink, both
# driven by Postfix's smtp-source (20 sessions, 5,000 messages of 2 KiB by default). The work is
# done by smtp_bench.py beside this script; its docstring says what is measured and how.
#
#   benchmarks/smtp_bench.sh [--sessions 20] [--messages 5000] [--size 2048] [--warmup 200]
#                            [--rounds 3] [--profile FILE] [--keep]
#
# Needs smtp-source, smtp-sink and postfix (Debian: postfix); the Postfix side needs root.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-"$here/../.venv/bin/python"}
exec "$python" "$here/smtp_bench.py" "$@"
