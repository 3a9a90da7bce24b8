"""Errors raised while reading specs.

    SpecError                 one or more problems in a source (file, or request body)
      .details: [SpecErrorDetail(source, line, path, message)]

Every detail names where the problem is, so a CLI can print `file:line: path: message`
and the API can answer with the field path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecErrorDetail:
    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(ValueError):
    def __init__(self, details: list[SpecErrorDetail]) -> None:
        self.details = details
        super().__init__("\n".join(str(d) for d in details))
