"""E-mail: raw RFC 5322 messages in (`inbound`, IMAP intake in `imap`), replies out (`outbound`).

Contract with the rest of Switchboard: an e-mail event's `external_id` is its Message-ID without
angle brackets; its thread hints are the In-Reply-To and References ids (newest last) and the
ticket tag `[#N]` of the subject.
"""
