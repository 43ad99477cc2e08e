"""Names of hark's Redis keys and channels, in one place (see DESIGN.md, "Redis").

Keys of one session carry the session id as a hash tag, so they land in one slot
on a Redis Cluster.
"""

from __future__ import annotations

AUDIT = "hark:audit"
CONTROL = "hark:control"
ACTORS = "hark:actors"  # set of actor names that have ever registered
DRAINING = "hark:draining"  # set of transcribers that get no new sessions
GROUP = "transcribers"  # consumer group on every mailbox
# Mailbox entries no transcriber could use (undecodable, or delivered again and again
# without ever being committed), with where they came from and why.
DEAD_LETTER = "hark:deadletter"
TRANSCRIPTS_PREFIX = "transcripts:"


def mailbox(actor: str) -> str:
    return f"hark:mailbox:{actor}"


def transcripts(client_id: str) -> str:
    return f"{TRANSCRIPTS_PREFIX}{client_id}"


def results(session_id: str) -> str:
    return f"hark:results:{{{session_id}}}"


def speakers(session_id: str) -> str:
    """A diarized session's speakers (services/transcriber/speakers.py)."""
    return f"hark:speakers:{{{session_id}}}"


def session(session_id: str) -> str:
    return f"hark:session:{{{session_id}}}"


def actor(name: str) -> str:
    return f"hark:actor:{name}"
