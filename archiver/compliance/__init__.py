"""The compliance pack: BagIt bags per job and sink, a hash-chained audit log, fixity
audits, replication between sinks and dry-run plans.

Importing this package has no side effects and pulls in no SDK; the modules are used by
the pipeline (bag writing), the ledger (audit records) and the ``verify``, ``audit
verify``, ``replicate`` and ``run --dry-run`` commands.
"""
