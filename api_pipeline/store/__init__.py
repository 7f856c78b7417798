"""The database side: the council's staging table and the tool's own tables beside it.

One connection and its transactions (``db``), opened by ``connect``, tried again by ``retry``;
every difference between the DBMSs in one class each (``dialect`` asks, ``sqlite``,
``sql_server`` and ``postgresql`` answer, ``dialects`` picks one); the tables' columns
(``columns``) and the names and DDL derived from them (``tables``); the staging table
(``staging``), the ledger, in-flight and in-doubt tables beside it (``ledger``) and the
write-back (``write_back``); what tables and columns exist (``catalogue``); ODBC strings and
drivers (``odbc``) and what their errors mean (``odbc_errors``); and the run lock and its
heartbeat (``lock``). All of the tool's SQL is here. It knows nothing of DfE.
"""
