"""The pieces every domain uses: the audit trail (`audit`), the errors services raise
(`errors`), the per-desktop worker lock (`locks`), handing work to Celery once the
transaction commits (`queue`), and the state-machine helper (`state_machine`: a table of
allowed moves applied by compare-and-set)."""
