"""
How a dataset's problems are reported, by the three folder readers and by the
dataset check alike: errors name the file and line (or entry) and are raised
together, so that one run lists them all; what was handled (a clipped box, an
image without objects) is counted and logged, so that nothing is dropped or
changed silently.
"""

import logging
from collections import Counter
from typing import Dict, Hashable, List, Optional

from ..errors import UsageError

__all__ = ["DatasetError", "DatasetProblems"]

logger = logging.getLogger(__name__)


class DatasetError(UsageError, ValueError):
    """The dataset is wrong (not merely degenerate): it must be fixed before training."""


class DatasetProblems:
    """
    What reading or checking ``what`` (e.g. "VOC dataset /data (train)")
    found: :meth:`error` collects errors, :meth:`note` counts handled cases
    (with up to three places as examples); :meth:`finish` raises the errors
    together as one :class:`DatasetError`, or logs the notes.
    """

    def __init__(self, what: str, max_listed: int = 8):
        self.what = what
        self.max_listed = max_listed
        self.errors: List[str] = []
        self.notes: Counter = Counter()
        self.examples: Dict[str, List[str]] = {}

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    def note(self, kind: str, where: Optional[str] = None) -> None:
        self.notes[kind] += 1
        if where is not None:
            listed = self.examples.setdefault(kind, [])
            if len(listed) < 3:
                listed.append(where)

    def listed_once(
        self, seen: Dict[Hashable, str], key: Hashable, where: str, what: str, place: str
    ) -> bool:
        """
        Whether ``key`` (an image, an id) is new to ``seen``; if it was listed
        before, an error "<what> listed twice (also <earlier place>)" at
        ``where``. ``seen`` maps each key to the place it was first listed.
        """
        if key in seen:
            self.error(where, f"{what} listed twice (also {seen[key]})")
            return False
        seen[key] = place
        return True

    def raise_errors(self) -> None:
        if not self.errors:
            return
        listed = "\n  ".join(self.errors[: self.max_listed])
        more = (
            f"\n  ... and {len(self.errors) - self.max_listed} more"
            if len(self.errors) > self.max_listed
            else ""
        )
        raise DatasetError(f"{len(self.errors)} problem(s) in {self.what}:\n  {listed}{more}")

    def log_notes(self, heading: Optional[str] = None) -> None:
        """
        One warning per kind of note, with examples; or, given ``heading``, all
        counts in one warning after it.
        """
        if heading is not None:
            if self.notes:
                logger.warning(
                    f"{heading}: "
                    + "; ".join(f"{n} {kind}" for kind, n in sorted(self.notes.items()))
                )
            return
        for kind, count in sorted(self.notes.items()):
            where = self.examples.get(kind)
            logger.warning(
                f"{self.what}: {count} {kind}" + (f" (e.g. {'; '.join(where)})" if where else "")
            )

    def finish(self) -> None:
        """Raise the errors (all in one :class:`DatasetError`), else log the notes."""
        self.raise_errors()
        self.log_notes()
