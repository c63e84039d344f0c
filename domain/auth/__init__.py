"""Users, groups, roles, tokens and authenticator codes (issue 14, docs/adr/0018): the pure
rules. No I/O, no clock, no randomness: times, salts, nonces and keys come in as arguments; the
sealing itself is application/auth.py over the ``Crypto`` port.

* ``roles``: the four roles, what each may do and which role keys each holds;
* ``records``: the records the auth service keeps (user, group, role epoch, sealed blobs) and
  the key sets a token carries;
* ``groups``: membership changes and who may make them;
* ``totp``: RFC 6238 codes (SHA-1, 6 digits, 30 s, +-1 step) and ``otpauth://`` URIs;
* ``lockout``: the growing back-off after wrong codes;
* ``token``: the versioned token and its text form;
* ``kdf``: HKDF-SHA-256 (RFC 5869).
"""
