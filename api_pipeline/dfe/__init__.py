"""The DfE side: what is sent, and how.

Payloads and the delta model (``payload``), a record's JSON text read and written exactly
(``json_text``), DfE's schema (``schema``), what an HTTP answer means for DfE's API and its token
endpoint alike (``answers``), the API client with its retries and splitting (``api``), DfE's
receipts (``receipts``), the OAuth2 token (``auth``), switching to a secondary credential
(``rotation``), the HTTP session and proxies (``transport``), TLS trust (``tls``) and bounded
reads of every answer (``bounded``). It knows nothing of the database.
"""
