"""The database side: the council's staging table and the tool's own tables beside it.

Connections and transactions (``db``), every difference between SQLite, SQL Server and
PostgreSQL (``dialects``), the staging table, ledger and write-back (``staging``), what tables
and columns exist (``catalogue``), ODBC drivers and their errors (``odbc``) and the run lock
(``lock``). All of the tool's SQL is here. It knows nothing of DfE.
"""
