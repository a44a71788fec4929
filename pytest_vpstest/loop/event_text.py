"""The one-line reason a transition records for the event that caused it (transitions log, runner.log)."""

from __future__ import annotations

from pytest_vpstest.loop import machine as m

__all__ = ["event_reason", "failure_event"]


def failure_event(stage: str, error: str) -> m.Event:
    """A stage's own error (one line) as the stage's failure event; SETUP/DEPLOY errors are fatal."""
    if stage == "BUILD":
        return m.BuildFinished(False, error)
    if stage == "TEST":
        return m.TestFinished(False, error)
    if stage == "FIX":
        return m.FixFinished(None, error)
    return m.Fatal(f"{stage}: {error}")


def event_reason(event: m.Event) -> str:
    """Why the machine moved: ``3/4 nodes reachable``, ``build failed: ...``, ``user stop``."""
    if isinstance(event, m.Start):
        return "loop started"
    if isinstance(event, m.SetupFinished):
        return f"{event.reachable}/{event.total} nodes reachable"
    if isinstance(event, m.BuildFinished):
        return "build ok" if event.ok else f"build failed: {event.error or 'no detail'}"
    if isinstance(event, m.DeployFinished):
        return f"deployed {event.succeeded}/{event.total}"
    if isinstance(event, m.TestFinished):
        verdict = "tests passed" if event.passed else "tests failed"
        return verdict + (f": {event.summary}" if event.summary else "")
    if isinstance(event, m.FixFinished):
        return f"fix committed {event.commit.sha[:12]}" if event.commit else f"fix failed: {event.error}"
    if isinstance(event, m.WaitElapsed):
        return "wait elapsed"
    if isinstance(event, m.RestartDone):
        return "restart done"
    if isinstance(event, m.NodesHealth):
        return f"{event.live}/{event.total} nodes live"
    return event.reason
