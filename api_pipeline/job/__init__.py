"""The job: one run, from reading the staging table to the receipts written back.

The command (``runner``), the pipeline that reads rows and builds payloads (``pipeline``,
``rows``), batches in flight and their write-back (``batches``), progress on the console
(``progress``), logging (``logs``), and the run's files: summary, report and their pruning
(``run_files``, ``report``). It joins the DfE side to the database side.
"""
