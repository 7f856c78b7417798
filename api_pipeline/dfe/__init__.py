"""The DfE side: what is sent, and how.

Payloads and the delta model (``payload``), a record's JSON text read and written exactly
(``json_text``), DfE's schema (``schema``), the API client with its
answer classification, receipts and retries (``api``), the OAuth2 token (``auth``), the HTTP
session and proxies (``transport``), TLS trust (``tls``) and bounded reads of every answer
(``bounded``). It knows nothing of the database.
"""
