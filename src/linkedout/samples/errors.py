"""The one error type of the sample fetcher: it carries the failed command, its stderr and a hint."""

from __future__ import annotations


class SampleFetchError(RuntimeError):
    """Fetching or reading the sample data failed; the message says what to do about it.

    Carries the failed command and the tail of its stderr so a user can re-run it by hand.
    """

    def __init__(
        self,
        message: str,
        *,
        command: list[str] | None = None,
        stderr: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.command = command
        self.stderr = stderr
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.message]
        if self.command:
            parts.append("command: " + " ".join(self.command))
        if self.stderr:
            tail = "\n".join(self.stderr.strip().splitlines()[-12:])
            parts.append("stderr (last lines):\n  " + tail.replace("\n", "\n  "))
        if self.hint:
            parts.append("hint: " + self.hint)
        return "\n".join(parts)


class SamplesNotFetchedError(SampleFetchError):
    """`load_samples` found no (or an incomplete) cache: the user must run `fetch-samples` first."""
