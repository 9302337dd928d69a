"""One module per provider: verify and parse inbound into timeline events; send outbound.

A channel module receives plain data (headers, body, URL) and returns plain events; it never
touches the database and nothing above it learns the provider's field names.
"""


class InvalidPayload(ValueError):
    """An authentic payload that cannot be understood; it is journaled as rejected."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
